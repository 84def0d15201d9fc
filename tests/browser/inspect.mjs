// Drives Strata's page in Debian's headless Chromium, as a person would:
// the page loads and lists the plugins; an image name typed into the
// inspector and submitted with Enter yields a layer chart with one bar per
// store-path layer of /api/inspect (the host's symlink layer is drawn too,
// as a separate `.layer-final` row without data-layer-index); a bad name
// shows the API's error message. The SBOM row says the document comes with
// the pull; after the image manifest is fetched, inspecting again shows
// links to the SPDX document and the referrers index, and both answer.
// Saves artifacts/inspector.png.
//
//   node inspect.mjs http://127.0.0.1:8080 [--image shell/hello] [--timeout 240]
//
// CHROMIUM overrides the browser binary (default /usr/bin/chromium).
// Exit status 0 when every check passed.

import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const opts = { url: null, image: "shell/hello", timeout: 240, out: join(here, "artifacts", "inspector.png") };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--image") opts.image = argv[++i];
    else if (a === "--timeout") opts.timeout = Number(argv[++i]);
    else if (a === "--out") opts.out = argv[++i];
    else if (!opts.url && !a.startsWith("--")) opts.url = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!opts.url) throw new Error("usage: node inspect.mjs URL [--image NAME] [--timeout SECONDS] [--out FILE]");
  if (!(opts.timeout > 0)) throw new Error("--timeout must be a positive number of seconds");
  opts.url = opts.url.replace(/\/+$/, "");
  return opts;
}

const results = [];
function check(name, ok, detail = "") {
  results.push({ name, ok });
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail ? ": " + detail : ""}`);
  return ok;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const deadline = Date.now() + opts.timeout * 1000;
  const left = () => Math.max(1000, deadline - Date.now());
  // Whatever happens below, never outlive the budget by much.
  const killer = setTimeout(() => {
    console.error(`browser test: gave up after ${opts.timeout} s`);
    process.exit(2);
  }, opts.timeout * 1000 + 15000);
  killer.unref();

  const profile = mkdtempSync(join(tmpdir(), "strata-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1100, height: 900 },
    timeout: 60000,
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    let watching = true;
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => {
      if (watching && m.type() === "error") problems.push(`console error: ${m.text()}`);
    });

    // 1. The page and the server's facts.
    const resp = await page.goto(opts.url + "/", { waitUntil: "load", timeout: 30000 });
    check("GET / answers 200", resp && resp.status() === 200, resp ? String(resp.status()) : "no response");
    check("page title", (await page.title()).includes("Strata"), await page.title());
    await page.locator("#plugins tr.plugin").first().waitFor({ state: "visible", timeout: 30000 });
    const plugins = await page.locator("#plugins tr.plugin th").allTextContents();
    check("plugins listed", plugins.length > 0, plugins.join(", "));
    const versions = await page.locator("#plugins tr.plugin td:nth-child(2)").allTextContents();
    check("plugin versions shown", versions.length === plugins.length && versions.every((v) => v.trim() !== ""), versions.join(", "));
    const source = (await page.locator("#source").textContent()) || "";
    check("package source shown", source.trim() !== "", source.trim());
    const pull = (await page.locator("pre.cmd").textContent()) || "";
    const host = new URL(opts.url).host;
    check("pull command names this host", pull.includes(`docker pull ${host}/shell/git`), pull.trim());

    // 2. The inspector, driven by keyboard: type the name, press Enter.
    const input = page.getByLabel("Image name");
    await input.fill(opts.image);
    await input.press("Enter");
    await page.waitForFunction(
      () =>
        document.querySelector("#result:not([hidden]) #layer-chart .layer-final") ||
        !document.getElementById("inspect-error").hidden,
      null,
      { timeout: left(), polling: 250 },
    );
    const errorBox = page.locator("#inspect-error");
    if (await errorBox.isVisible()) {
      check(`inspect ${opts.image}`, false, (await errorBox.textContent()) || "");
    } else {
      const bars = await page.locator("#layer-chart .layer[data-layer-index]").count();
      const finals = await page.locator("#layer-chart .layer-final").count();
      const rows = await page.locator("#closure tbody tr").count();
      const chips = await page.locator("#r-packages li").allTextContents();

      const api = await fetch(`${opts.url}/api/inspect/${opts.image}`, { signal: AbortSignal.timeout(left()) });
      check("GET /api/inspect answers 200", api.status === 200, String(api.status));
      const data = await api.json();
      check("one bar per layer of /api/inspect", bars === data.layers.length, `${bars} bars, ${data.layers.length} layers`);
      check("symlink layer drawn once, last", finals === 1 && (await page.locator("#layer-chart > li").last().getAttribute("data-layer")) === "symlinks");
      check("closure rows match", rows === data.closure.length, `${rows} rows, ${data.closure.length} paths`);
      check("expanded packages shown", JSON.stringify(chips) === JSON.stringify(data.packages), chips.join(" "));
      const sizes = await page.locator("#closure tbody td[data-bytes]").evaluateAll((tds) => tds.map((t) => Number(t.dataset.bytes)));
      check("closure sorted by size, largest first", sizes.every((s, i) => i === 0 || sizes[i - 1] >= s));
      const labelled = await page
        .locator("#layer-chart .layer[data-layer-index] .layer-size")
        .evaluateAll((els) => els.every((e) => e.textContent.trim() !== ""));
      check("every bar labelled with its size", labelled);
      const status = (await page.locator("#inspect-status").textContent()) || "";
      check("result announced", status.startsWith("Inspected"), status);

      // 2b. The SBOM row: a promise before the image is pulled, links after.
      const sbomText = ((await page.locator("#r-sbom").textContent()) || "").trim();
      if (data.built === null) {
        check("SBOM row says it comes with the pull", sbomText.includes("once the image is pulled") && (await page.locator("#r-sbom a").count()) === 0, sbomText);
      } else {
        check("image was already built before this run (no not-built row to check)", data.built !== undefined, JSON.stringify(data.built));
      }
      const pulled = await fetch(`${opts.url}/v2/${opts.image}/manifests/latest`, {
        headers: { Accept: "application/vnd.oci.image.manifest.v1+json" },
        signal: AbortSignal.timeout(left()),
      });
      check("image pulled (GET manifest by tag)", pulled.status === 200, String(pulled.status));
      const manifestDigest = pulled.headers.get("docker-content-digest");
      await pulled.arrayBuffer();
      await input.fill(opts.image);
      await input.press("Enter");
      const linked = await page
        .waitForFunction(
          () => document.getElementById("r-sbom-link") || !document.getElementById("inspect-error").hidden,
          null,
          { timeout: Math.min(left(), 120000), polling: 250 },
        )
        .then(() => true, () => false);
      check("SBOM links shown after the pull", linked && (await page.locator("#r-sbom-link").count()) === 1, ((await page.locator("#r-sbom").textContent()) || "").trim());
      const after = await (await fetch(`${opts.url}/api/inspect/${opts.image}`, { signal: AbortSignal.timeout(left()) })).json();
      const sbom = after.built && after.built.sbom;
      check("/api/inspect names the built image and its SBOM", !!sbom && after.built.manifest === manifestDigest, JSON.stringify(after.built));
      const attr = async (id) => ((await page.locator(id).count()) === 1 ? page.locator(id).getAttribute("href") : null);
      const sbomHref = await attr("#r-sbom-link");
      const refHref = await attr("#r-referrers-link");
      check("SBOM link is the API's blob_url", !!sbom && sbomHref === sbom.blob_url, `${sbomHref}`);
      check("referrers link is the API's referrers_url", !!sbom && refHref === sbom.referrers_url, `${refHref}`);
      if (sbomHref) {
        const r = await fetch(new URL(sbomHref, page.url()), { signal: AbortSignal.timeout(left()) });
        const doc = r.status === 200 ? await r.json() : {};
        check(
          "SBOM link serves an SPDX 2.3 document of the image",
          r.status === 200 &&
            doc.spdxVersion === "SPDX-2.3" &&
            after.packages.every((p) => (doc.name || "").includes(p)) &&
            Array.isArray(doc.packages) &&
            doc.packages.length === after.closure.length,
          `${r.status} ${doc.spdxVersion} ${doc.name} ${doc.packages && doc.packages.length} packages, ${after.closure.length} paths`,
        );
      }
      if (refHref) {
        const r = await fetch(new URL(refHref, page.url()), { signal: AbortSignal.timeout(left()) });
        const index = r.status === 200 ? await r.json() : {};
        const listed = Array.isArray(index.manifests) ? index.manifests : [];
        check(
          "referrers link serves an OCI index listing the SBOM",
          r.status === 200 &&
            (r.headers.get("content-type") || "").startsWith("application/vnd.oci.image.index.v1+json") &&
            listed.length === 1 &&
            listed[0].artifactType === "application/spdx+json",
          `${r.status} ${r.headers.get("content-type")} ${JSON.stringify(listed)}`,
        );
      }
    }
    mkdirSync(dirname(opts.out), { recursive: true });
    await page.screenshot({ path: opts.out, fullPage: true });
    console.log(`screenshot: ${opts.out}`);
    watching = false;
    check("no page errors", problems.length === 0, problems.join("; "));

    // 3. An invalid name: the API's own message, readable.
    await input.fill("Not A Name!");
    await input.press("Enter");
    await errorBox.waitFor({ state: "visible", timeout: 30000 });
    const message = (await errorBox.textContent()) || "";
    check("API error shown", message.includes("invalid repository name"), message.trim());

    // 4. Packages the set refuses or lacks: one line each, with the set's reason.
    await input.fill("hello/ncdu/nope-e2e");
    await input.press("Enter");
    await page.waitForFunction(
      () => document.querySelectorAll("#inspect-error ul.unavailable li").length > 0,
      null,
      { timeout: 60000 },
    );
    const items = await page.locator("#inspect-error ul.unavailable li").allTextContents();
    check(
      "unavailable packages listed with reasons",
      items.length === 2 &&
        items.some((t) => t.startsWith("ncdu: ") && t.includes("marked as broken")) &&
        items.some((t) => t.startsWith("nope-e2e: ") && t.includes("not in the package set")),
      items.join(" | "),
    );
  } finally {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  const failed = results.filter((r) => !r.ok).length;
  console.log(`browser: ${results.length - failed} passed, ${failed} failed`);
  clearTimeout(killer);
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`browser test: ${e.stack || e}`);
    process.exit(1);
  },
);
