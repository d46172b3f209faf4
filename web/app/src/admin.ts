/**
 * The admin page, for server administrators (`GET /v1/me` says `admin`): the moderation
 * queue with each report's snapshot (what was reported, as it was then) and what to do about
 * it, the users with suspension, ban and restore, and the audit log. Everyone else never
 * sees it (and the server answers them as if the admin API did not exist).
 */
import type { Api, Report, UserId } from "@natter/sdk";
import { byId, clear, h, time } from "./dom.js";

let api: Api | undefined;

/** Opens the page and loads what it shows. */
export async function showAdmin(with_: Api): Promise<void> {
  api = with_;
  document.body.classList.add("admin-open");
  await refresh();
}

export function hideAdmin(): void {
  document.body.classList.remove("admin-open");
}

async function refresh(): Promise<void> {
  await Promise.all([loadReports(), loadUsers(byId<HTMLInputElement>("admin-user-q").value), loadAudit()]);
}

function snapshotText(r: Report): string {
  const s = r.snapshot as { body?: string; state?: { body?: string }; handle?: string; display_name?: string; status_text?: string };
  if (r.seq !== undefined) return s.state?.body ?? s.body ?? "";
  return [s.display_name, s.status_text].filter(Boolean).join(" · ") || `@${s.handle ?? r.subject_handle}`;
}

async function loadReports(): Promise<void> {
  const status = byId<HTMLSelectElement>("admin-status").value as "open" | "all";
  const { reports } = await api!.reports({ status });
  const list = byId("admin-reports");
  if (!reports.length) return clear(list, h("li", { class: "empty" }, "Nothing to review."));
  clear(
    list,
    ...reports.map((r) =>
      h(
        "li",
        { class: `report ${r.status}`, "data-report": r.id },
        h(
          "div",
          { class: "who" },
          h("strong", {}, r.seq !== undefined ? "Message" : "User"),
          ` by @${r.subject_handle} · reported by ${r.reporter_handle ? `@${r.reporter_handle}` : "the content rules"} · ${time(r.created_at)}`,
        ),
        h("blockquote", { class: "snapshot" }, snapshotText(r)),
        h("div", { class: "reason" }, `Reason: ${r.reason}`),
        r.status === "open"
          ? h(
              "div",
              { class: "row" },
              r.conversation !== undefined && r.seq !== undefined
                ? h("button", { class: "danger", onclick: () => void act(r, "remove") }, "Remove message")
                : null,
              h("button", { class: "danger", onclick: () => void act(r, "ban") }, `Ban @${r.subject_handle}`),
              h("button", { onclick: () => void act(r, "resolve") }, "Resolve"),
              h("button", { class: "secondary", onclick: () => void act(r, "dismiss") }, "Dismiss"),
            )
          : h("div", { class: "note-line" }, `${r.status}${r.note ? `: ${r.note}` : ""}`),
      ),
    ),
  );
}

async function act(r: Report, what: "remove" | "ban" | "resolve" | "dismiss"): Promise<void> {
  const out = byId("admin-note");
  try {
    if (what === "remove" && r.conversation !== undefined && r.seq !== undefined) {
      await api!.removeMessage(r.conversation, r.seq).catch((e: { code?: string }) => {
        if (e.code !== "conflict") throw e;
      });
      await api!.resolveReport(r.id, "resolved", "message removed");
    } else if (what === "ban") {
      await api!.suspend(r.subject, `report ${r.id}: ${r.reason}`);
      await api!.resolveReport(r.id, "resolved", "user banned");
    } else {
      await api!.resolveReport(r.id, what === "resolve" ? "resolved" : "dismissed");
    }
    out.textContent = "Done.";
  } catch (err) {
    out.textContent = `Failed: ${(err as Error).message}`;
  }
  await refresh();
}

async function loadUsers(q: string): Promise<void> {
  const { users } = await api!.adminUsers(q.trim() ? { q: q.trim() } : {});
  clear(
    byId("admin-users"),
    ...users.map((u) => {
      const state = u.banned ? "banned" : u.suspended_until ? `suspended until ${time(u.suspended_until)}` : u.user.deleted ? "deleted" : "";
      return h(
        "li",
        { "data-user": u.user.user_id },
        h("span", {}, `@${u.user.handle}${u.admin ? " (admin)" : ""}${state ? ` · ${state}` : ""}`),
        u.admin || u.user.deleted
          ? null
          : u.banned || u.suspended_until
            ? h("button", { onclick: () => void userAct(u.user.user_id, "restore") }, "Restore")
            : h(
                "span",
                { class: "row" },
                h("button", { class: "secondary", onclick: () => void userAct(u.user.user_id, "suspend") }, "Suspend 1 day"),
                h("button", { class: "danger", onclick: () => void userAct(u.user.user_id, "ban") }, "Ban"),
              ),
      );
    }),
  );
}

async function userAct(user: UserId, what: "suspend" | "ban" | "restore"): Promise<void> {
  const out = byId("admin-note");
  try {
    if (what === "restore") await api!.restore(user);
    else await api!.suspend(user, "by an administrator", what === "suspend" ? { forSecs: 86_400 } : {});
    out.textContent = "Done.";
  } catch (err) {
    out.textContent = `Failed: ${(err as Error).message}`;
  }
  await refresh();
}

async function loadAudit(): Promise<void> {
  const { entries } = await api!.auditLog({ limit: 50 });
  clear(
    byId("admin-audit"),
    ...entries.map((e) =>
      h("li", {}, `${time(e.created_at)} · ${e.action}${e.target_user !== undefined ? ` · user ${e.target_user}` : ""}${e.report !== undefined ? ` · report ${e.report}` : ""}`),
    ),
  );
}

/** Wires the page's own controls (once). */
export function bindAdmin(close: () => void): void {
  byId("admin-close").addEventListener("click", close);
  byId("admin-refresh").addEventListener("click", () => void refresh());
  byId("admin-status").addEventListener("change", () => void loadReports());
  byId("admin-user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void loadUsers(byId<HTMLInputElement>("admin-user-q").value);
  });
}
