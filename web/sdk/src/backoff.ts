/**
 * Reconnect delays: attempt `n` waits a random time in `0..=min(maxMs, initialMs * 2^n)`
 * ("full jitter", so that clients dropped together do not come back together). The attempt
 * count starts over once a connection has stayed up for `stableAfterMs`.
 */
export interface Backoff {
  initialMs: number;
  maxMs: number;
  stableAfterMs: number;
}

export const defaultBackoff: Backoff = { initialMs: 100, maxMs: 10_000, stableAfterMs: 10_000 };

/** The ceiling of attempt `attempt`'s delay (0 for the first retry). */
export function backoffCeiling(b: Backoff, attempt: number): number {
  const factor = 2 ** Math.min(Math.max(attempt, 0), 31);
  return Math.min(b.initialMs * factor, b.maxMs);
}

/** The jittered delay before attempt `attempt`. */
export function backoffDelay(b: Backoff, attempt: number, random: () => number = Math.random): number {
  const ceiling = backoffCeiling(b, attempt);
  return Math.floor(random() * (ceiling + 1));
}
