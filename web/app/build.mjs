// Builds the web client into crates/server/assets/web/, which the server embeds
// (crates/server/src/http/webapp.rs). The output is committed; CI builds it again and fails
// if it differs, so it is deterministic: no timestamps, no hashes of the machine.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "..", "crates", "server", "assets", "web");
await mkdir(out, { recursive: true });
const common = {
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
  // The SDK from its sources, so that the build depends on nothing built before it.
  alias: { "@natter/sdk": join(here, "..", "sdk", "src", "index.ts") },
};
await build({ ...common, entryPoints: [join(here, "src", "app.ts")], outfile: join(out, "app.js") });
await build({ ...common, entryPoints: [join(here, "src", "worker.ts")], outfile: join(out, "worker.js") });
// The push service worker as a classic script (module service workers are not everywhere);
// served at /app/sw.js, its scope is /app/ (src/sw.ts says why that is enough).
await build({ ...common, format: "iife", entryPoints: [join(here, "src", "sw.ts")], outfile: join(out, "sw.js") });
await build({ ...common, entryPoints: [join(here, "app.css")], outfile: join(out, "app.css") });
for (const f of ["index.html", "icon.svg"]) await copyFile(join(here, f), join(out, f));
