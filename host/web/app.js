// Strata's page: server facts from /api/info and the image inspector over
// /api/inspect. Plain DOM, no framework, no other origin.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const host = location.host || "HOST";
  let info = null;
  let current = null; // the inspection shown
  let sortKey = "size";
  let sortDir = -1; // descending
  let requestSeq = 0;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c !== null && c !== undefined) e.append(c);
    }
    return e;
  }

  function human(bytes) {
    if (!Number.isFinite(bytes)) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = bytes;
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }

  // /nix/store/<hash>-name → name
  function storeName(path) {
    const base = path.split("/").pop() || path;
    const dash = base.indexOf("-");
    return dash > 0 ? base.slice(dash + 1) : base;
  }

  // ------------------------------------------------------------ server facts

  function roleText(r) {
    switch (r.role) {
      case "expand":
        return "name expansion, step " + (r.position + 1);
      case "group":
        return "layer grouping (default)";
      case "group_rule": {
        const parts = [];
        if (r.prefix) parts.push("names starting " + r.prefix);
        if (r.tag) parts.push("tag " + r.tag);
        return "layer grouping for " + (parts.join(", ") || "every image") + " (rule " + (r.index + 1) + ")";
      }
      case "source":
        return "package source";
      default:
        return r.role;
    }
  }

  function sourceText(source) {
    const entries = Object.entries(source.config || {});
    const desc = entries.length
      ? entries.map(([k, v]) => k + " = " + (typeof v === "string" ? v : JSON.stringify(v))).join(", ")
      : "(no configuration)";
    return desc + " (plugin " + source.plugin + ")";
  }

  function renderInfo(data) {
    info = data;
    $("source").textContent = sourceText(data.source);
    $("storage").textContent = data.storage;
    $("budget").textContent = data.layers.budget + " layers per image, the symlink layer included";
    $("version").textContent = data.version;
    $("foot-version").textContent = data.version;
    $("setup").hidden = false;

    const body = $("plugins").tBodies[0];
    body.replaceChildren();
    for (const p of data.plugins) {
      const roles = el("td");
      for (const r of p.roles) roles.append(el("span", { class: "role", text: roleText(r) }), " ");
      const name = p.module_name && p.module_name !== p.name ? p.name + " (" + p.module_name + ")" : p.name;
      const digest = (p.digest || "").replace(/^sha256:/, "");
      body.append(
        el(
          "tr",
          { class: "plugin", "data-plugin": p.name },
          el("th", { scope: "row", text: name }),
          el("td", { text: p.version }),
          roles,
          el("td", { text: p.hooks.join(", ") }),
          el("td", { class: "digest", title: p.digest + (p.origin ? " (" + p.origin + ")" : "") , text: digest.slice(0, 12) }),
        ),
      );
    }
    $("plugins").hidden = false;
    $("info-status").textContent = data.plugins.length + " plugins loaded.";
  }

  async function loadInfo() {
    try {
      const resp = await fetch("api/info", { headers: { Accept: "application/json" } });
      if (!resp.ok) {
        const m = await errorMessage(resp);
        throw new Error(typeof m === "string" ? m : m.text);
      }
      renderInfo(await resp.json());
    } catch (e) {
      $("info-status").textContent = "Could not load the server's configuration: " + e.message;
    }
  }

  // --------------------------------------------------------------- inspector

  // The registry's error body: {"errors":[{"code","message","detail"}]}.
  async function errorMessage(resp) {
    let text = "";
    try {
      text = await resp.text();
      const body = JSON.parse(text);
      const e = body && body.errors && body.errors[0];
      if (e && e.message) {
        let msg = e.message;
        const d = e.detail || {};
        const missing = Array.isArray(d.missing) ? d.missing : [];
        const unavailable = Array.isArray(d.unavailable) ? d.unavailable : [];
        if (missing.length || unavailable.length) {
          // One line per package the set cannot give, with its reason.
          const items = unavailable.map((u) => ({ name: u.name, why: u.reason }));
          for (const m of missing) items.push({ name: m, why: "not in the package set" });
          return { text: "these packages are not available", items };
        }
        return msg;
      }
    } catch (_) {
      // not JSON: fall through
    }
    return "the server answered " + resp.status + " " + resp.statusText + (text && text.length < 200 ? ": " + text.trim() : "");
  }

  // Accepts `shell/git`, `shell/git:tag` and `HOST/shell/git[:tag]`.
  function parseInput(raw, tagField) {
    let name = raw.trim().replace(/^docker pull\s+/, "");
    if (name.startsWith(host + "/")) name = name.slice(host.length + 1);
    let tag = tagField.trim();
    const colon = name.lastIndexOf(":");
    if (colon > name.lastIndexOf("/")) {
      if (!tag) tag = name.slice(colon + 1);
      name = name.slice(0, colon);
    }
    return { name: name.replace(/^\/+|\/+$/g, ""), tag: tag || "latest" };
  }

  // `message`: a string, or {text, items: [{name, why}]} from errorMessage.
  function showError(prefix, message) {
    const box = $("inspect-error");
    if (message === undefined) {
      box.replaceChildren(el("p", { text: prefix }));
    } else if (typeof message === "string") {
      box.replaceChildren(el("p", { text: prefix + message }));
    } else {
      const list = el("ul", { class: "unavailable" });
      for (const item of message.items) {
        list.append(el("li", {}, el("code", { text: item.name }), document.createTextNode(": " + item.why)));
      }
      box.replaceChildren(el("p", { text: prefix + message.text + ":" }), list);
    }
    box.hidden = false;
  }

  async function inspect(event) {
    if (event) event.preventDefault();
    const { name, tag } = parseInput($("inspect-name").value, $("inspect-tag").value);
    $("inspect-error").hidden = true;
    if (!name) {
      showError("Enter an image name, for example shell/hello.");
      $("inspect-name").focus();
      return;
    }
    const seq = ++requestSeq;
    const button = $("inspect-button");
    button.disabled = true;
    $("inspect-status").textContent = "Inspecting " + name + ":" + tag + "…";
    const params = new URLSearchParams({ image: name });
    if (tag !== "latest") params.set("tag", tag);
    history.replaceState(null, "", "?" + params.toString() + "#inspector");

    const url =
      "api/inspect/" + name.split("/").map(encodeURIComponent).join("/") + (tag !== "latest" ? "?tag=" + encodeURIComponent(tag) : "");
    try {
      const resp = await fetch(url, { headers: { Accept: "application/json" } });
      if (seq !== requestSeq) return;
      if (!resp.ok) {
        const msg = await errorMessage(resp);
        if (seq !== requestSeq) return;
        $("inspect-status").textContent = "";
        showError("Cannot inspect " + name + ":" + tag + ": ", msg);
        return;
      }
      const data = await resp.json();
      if (seq !== requestSeq) return;
      renderInspection(data);
      const total = data.closure.reduce((s, p) => s + p.nar_size, 0);
      $("inspect-status").textContent =
        "Inspected " + data.name + ":" + data.tag + ": " + data.packages.length + " packages, " + data.closure.length +
        " store paths (" + human(total) + "), " + (data.layers.length + 1) + " layers.";
    } catch (e) {
      if (seq !== requestSeq) return;
      $("inspect-status").textContent = "";
      showError("Cannot inspect " + name + ":" + tag + ": ", e.message || "the request failed");
    } finally {
      if (seq === requestSeq) button.disabled = false;
    }
  }

  function renderInspection(data) {
    current = data;
    const ref = data.name + (data.tag !== "latest" ? ":" + data.tag : "");
    $("r-name").textContent = data.name + ":" + data.tag;
    $("r-pull").textContent = "docker pull " + host + "/" + ref;
    $("r-packages").replaceChildren(...data.packages.map((p) => el("li", { text: p })));
    $("r-arch").textContent = data.arch + (data.platforms.length > 1 ? " (shown below; every platform in Platforms)" : "");
    renderPlatforms(data);
    $("r-source").textContent =
      data.source +
      (data.revision ? " at revision " + data.revision : "") +
      (data.immutable ? " (immutable: built once, kept)" : " (mutable: rebuilt when the cached image expires)");
    $("r-grouping").textContent = "plugin " + data.grouping_plugin + ", strategy “" + data.strategy + "”";
    renderSbom(data);
    renderLayers(data);
    renderClosure();
    $("result").hidden = false;
  }

  // Every platform the name is built for: with several, a tag is an image
  // index with one manifest each (the details below are one platform's).
  function renderPlatforms(data) {
    $("r-platforms").replaceChildren(
      ...data.platforms.map((p) => {
        const built = p.built ? "manifest " + p.built.manifest.slice(0, 19) + "…" : "not built yet";
        const text = p.platform + ": " + p.closure_paths + " store paths (" + human(p.closure_nar_size) + "), " + p.layers + " layers, " + built;
        return el("li", { text, title: p.built ? p.built.manifest : "" });
      }),
    );
  }

  // The SPDX document of the built image (the registry writes one per
  // image, served as an OCI artifact referring to the image manifest).
  function renderSbom(data) {
    const dd = $("r-sbom");
    const built = data.built;
    if (built && built.sbom) {
      const s = built.sbom;
      dd.replaceChildren(
        el("a", { id: "r-sbom-link", href: s.blob_url, type: "application/spdx+json", title: s.digest, text: "SPDX document" }),
        " (" + human(s.size) + ", SPDX 2.3 JSON) · ",
        el("a", { id: "r-referrers-link", href: s.referrers_url, title: "OCI referrers of " + built.manifest, text: "referrers of the image manifest" }),
      );
    } else if (built) {
      dd.textContent = "None: this server writes no SBOM ([sbom] enabled = false).";
    } else {
      dd.textContent = "Not built yet: the SBOM appears once the image is pulled.";
    }
  }

  function renderLayers(data) {
    const chart = $("layer-chart");
    chart.replaceChildren();
    const max = Math.max(1, ...data.layers.map((l) => l.nar_size));
    const total = data.layers.reduce((s, l) => s + l.nar_size, 0);
    const sizes = new Map(data.closure.map((p) => [p.path, p.nar_size]));
    data.layers.forEach((layer, i) => {
      const pct = (100 * layer.nar_size) / max;
      const bar = el("div", { class: "layer-bar", role: "presentation" });
      bar.style.width = Math.max(pct, 0.5) + "%";
      const names = layer.paths.map(storeName);
      const tooltip = names.slice(0, 40).join("\n") + (names.length > 40 ? "\n… and " + (names.length - 40) + " more" : "");
      const list = el("ul");
      for (const p of layer.paths) list.append(el("li", { text: p + " (" + human(sizes.get(p)) + ")" }));
      chart.append(
        el(
          "li",
          { class: "layer", "data-layer-index": String(i), "data-nar-size": String(layer.nar_size), title: tooltip },
          el("span", { class: "layer-label", text: "Layer " + (i + 1) }),
          el(
            "div",
            { class: "layer-track" },
            el("span", { class: "layer-size", text: human(layer.nar_size) }),
            el("div", { class: "layer-barbox" }, bar),
          ),
          el(
            "details",
            {},
            el("summary", { text: layer.paths.length + (layer.paths.length === 1 ? " store path: " : " store paths: ") + names.slice(0, 4).join(", ") + (names.length > 4 ? ", …" : "") }),
            list,
          ),
        ),
      );
    });
    // The host adds one more layer to every image, after the plugin's.
    const roots = el("ul");
    for (const r of data.roots) roots.append(el("li", { text: r }));
    const finalBar = el("div", { class: "layer-bar", role: "presentation" });
    finalBar.style.width = "0.5%";
    chart.append(
      el(
        "li",
        { class: "layer layer-final", "data-layer": "symlinks", title: "Added by the host: symlinks to the packages, /etc, /tmp" },
        el("span", { class: "layer-label", text: "Layer " + (data.layers.length + 1) }),
        el("div", { class: "layer-track" }, el("span", { class: "layer-size", text: "symlinks" }), el("div", { class: "layer-barbox" }, finalBar)),
        el(
          "details",
          {},
          el("summary", { text: "symlink layer, always last, added by the host: links /bin and friends to the packages" }),
          roots,
        ),
      ),
    );
    const budget = info ? " of the budget of " + info.layers.budget : "";
    $("layers-summary").textContent =
      data.layers.length + " store-path layers grouped by the " + data.grouping_plugin + " plugin, plus the host's symlink layer: " +
      (data.layers.length + 1) + " layers" + budget + ". Bars show uncompressed (NAR) sizes, " + human(total) + " in all.";
  }

  function renderClosure() {
    if (!current) return;
    const layerOf = new Map();
    current.layers.forEach((l, i) => l.paths.forEach((p) => layerOf.set(p, i + 1)));
    const rows = current.closure.slice();
    const cmp = {
      size: (a, b) => a.nar_size - b.nar_size || a.path.localeCompare(b.path),
      path: (a, b) => storeName(a.path).localeCompare(storeName(b.path)) || a.path.localeCompare(b.path),
      layer: (a, b) => (layerOf.get(a.path) || 0) - (layerOf.get(b.path) || 0) || b.nar_size - a.nar_size,
    }[sortKey];
    rows.sort((a, b) => sortDir * cmp(a, b));
    const body = $("closure").tBodies[0];
    body.replaceChildren(
      ...rows.map((p) =>
        el(
          "tr",
          { "data-path": p.path },
          el("td", { class: "path", text: p.path }),
          el("td", { class: "num", "data-bytes": String(p.nar_size), text: human(p.nar_size) }),
          el("td", { class: "num", text: layerOf.has(p.path) ? String(layerOf.get(p.path)) : "" }),
        ),
      ),
    );
    for (const th of $("closure").tHead.rows[0].cells) {
      const key = th.querySelector("button").dataset.sort;
      th.setAttribute("aria-sort", key === sortKey ? (sortDir < 0 ? "descending" : "ascending") : "none");
    }
    const total = current.closure.reduce((s, p) => s + p.nar_size, 0);
    $("closure-summary").textContent =
      current.closure.length + " store paths, " + human(total) + " uncompressed. Roots: " + current.roots.map(storeName).join(", ") + ".";
  }

  function onSort(event) {
    const button = event.target.closest("button.sort");
    if (!button) return;
    const key = button.dataset.sort;
    if (key === sortKey) sortDir = -sortDir;
    else {
      sortKey = key;
      sortDir = key === "size" ? -1 : 1;
    }
    renderClosure();
  }

  function init() {
    for (const e of document.querySelectorAll(".host")) e.textContent = host;
    $("inspect-form").addEventListener("submit", inspect);
    $("closure").tHead.addEventListener("click", onSort);
    loadInfo();
    const params = new URLSearchParams(location.search);
    const image = params.get("image");
    if (image) {
      $("inspect-name").value = image;
      $("inspect-tag").value = params.get("tag") || "";
      inspect();
    }
  }

  init();
})();
