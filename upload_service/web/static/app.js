// The upload page: pick or drop files, watch each upload, pause, resume, cancel, and see what
// the server made of it (state, sha256, video details, a player).
//
// Configuration, in order of precedence:
//   window.UPLOAD_SERVICE = {token, endpoint, api, chunkSize, parallel}, set by a page that embeds
//     this script (token: a string, or a function returning one or a promise of one);
//   the data attributes the service writes into its own page (endpoint, api, chunk size);
//   a token in the URL fragment, #token=... (moved to sessionStorage and removed from the address
//     bar at once; a fragment never reaches a server, a log or a Referer).

import { ResumeStore, TusUpload, deleteUpload, describeStatus, headUpload, serverLimits } from "./tus.js";

const TOKEN_KEY = "upload-service:token";
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
const FINAL_STATES = new Set(["ready", "failed", "expired", "terminated"]);

export function formatBytes(bytes) {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 2 : 1)} ${UNITS[unit]}`;
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(rest).padStart(2, "0")} s`;
  return `${rest} s`;
}

function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = params.get("token");
  if (token) {
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      // no session storage: the token lives for this page view only
    }
    params.delete("token");
    const rest = params.toString();
    history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    return token;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function readConfig(root) {
  const embedded = window.UPLOAD_SERVICE || {};
  const data = (name) => {
    const value = root.dataset[name];
    return value && !value.startsWith("{{") ? value : null; // a copied template: not filled in
  };
  const endpoint = new URL(embedded.endpoint || data("endpoint") || "/files/", location.href).href;
  const api = new URL(embedded.api || data("api") || new URL("/api", endpoint).href, location.href).href.replace(/\/$/, "");
  return {
    endpoint,
    api,
    chunkSize: Number(embedded.chunkSize || data("chunkSize")) || 8 * 1024 * 1024,
    parallel: Number(embedded.parallel) || 3,
    token: embedded.token || tokenFromFragment(),
  };
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/** Bytes per second over the last few seconds of samples (null until there is enough). */
class RateMeter {
  constructor(window = 5000) {
    this.window = window;
    this.samples = [];
  }

  reset() {
    this.samples = [];
  }

  add(bytes) {
    const now = performance.now();
    this.samples.push([now, bytes]);
    while (this.samples.length > 2 && now - this.samples[0][0] > this.window) this.samples.shift();
  }

  get rate() {
    if (this.samples.length < 2) return null;
    const [t0, b0] = this.samples[0];
    const [t1, b1] = this.samples[this.samples.length - 1];
    return t1 - t0 < 500 ? null : ((b1 - b0) * 1000) / (t1 - t0);
  }
}

class Page {
  constructor(root) {
    this.root = root;
    this.config = readConfig(root);
    this.store = new ResumeStore();
    this.items = [];
    this.maxSize = null;
    this.build();
    this.showUnfinished();
    serverLimits(this.config.endpoint)
      .then(({ maxSize }) => {
        this.maxSize = maxSize;
        if (maxSize) this.limits.textContent = `Files up to ${formatBytes(maxSize)}.`;
      })
      .catch(() => {});
  }

  authHeaders() {
    return Promise.resolve(typeof this.config.token === "function" ? this.config.token() : this.config.token).then(
      (token) => (token ? { Authorization: `Bearer ${token}` } : {}),
    );
  }

  build() {
    this.input = el("input", { id: "file-input", type: "file", multiple: true, class: "visually-hidden", tabindex: "-1" });
    const choose = el("button", { type: "button", class: "button primary", text: "Choose files" });
    choose.addEventListener("click", () => this.input.click());
    this.input.addEventListener("change", () => {
      this.addFiles(this.input.files);
      this.input.value = ""; // the same file can be chosen again
    });
    this.limits = el("p", { class: "limits" });
    this.dropzone = el(
      "section",
      { class: "dropzone", "aria-labelledby": "upload-title" },
      el("h1", { id: "upload-title", text: "Upload files" }),
      el("p", { text: "Drag and drop files here, or" }),
      choose,
      el("label", { for: "file-input", class: "visually-hidden", text: "Files to upload" }),
      this.input,
      this.limits,
    );
    for (const name of ["dragenter", "dragover"]) {
      this.dropzone.addEventListener(name, (event) => {
        event.preventDefault();
        this.dropzone.classList.add("dragging");
      });
    }
    this.dropzone.addEventListener("dragleave", (event) => {
      if (!this.dropzone.contains(event.relatedTarget)) this.dropzone.classList.remove("dragging");
    });
    this.dropzone.addEventListener("drop", (event) => {
      event.preventDefault();
      this.dropzone.classList.remove("dragging");
      if (event.dataTransfer) this.addFiles(event.dataTransfer.files);
    });
    // A file dropped beside the zone must not make the browser leave the page to open it.
    for (const name of ["dragover", "drop"]) window.addEventListener(name, (event) => event.preventDefault());

    this.list = el("ul", { class: "uploads", id: "uploads" });
    this.unfinished = el("ul", { class: "unfinished" });
    this.unfinishedSection = el(
      "section",
      { class: "unfinished-section", hidden: true, "aria-labelledby": "unfinished-title" },
      el("h2", { id: "unfinished-title", text: "Unfinished uploads" }),
      el("p", { text: "Choose the same file again to resume where it stopped." }),
      this.unfinished,
    );
    this.announcer = el("div", { class: "visually-hidden", "aria-live": "polite", role: "status" });
    this.root.replaceChildren(
      this.dropzone,
      this.unfinishedSection,
      el("section", { "aria-label": "Uploads" }, this.list),
      this.announcer,
    );
  }

  announce(text) {
    this.announcer.textContent = text;
  }

  async showUnfinished() {
    const entries = this.store.entries(this.config.endpoint);
    for (const entry of entries) {
      const status = el("span", { class: "unfinished-status", text: "checking…" });
      const discard = el("button", { type: "button", class: "button small", text: "Discard" });
      const row = el(
        "li",
        { "data-key": entry.key },
        el("span", { class: "name", text: entry.name }),
        el("span", { class: "size", text: ` ${formatBytes(entry.size)} ` }),
        status,
        discard,
      );
      discard.addEventListener("click", async () => {
        discard.disabled = true;
        this.store.remove(entry.key);
        try {
          await deleteUpload(entry.url, { "Tus-Resumable": "1.0.0", ...(await this.authHeaders()) });
        } catch {
          // it expires on its own
        }
        this.dropUnfinished(entry.key);
      });
      this.unfinished.append(row);
      this.unfinishedSection.hidden = false;
      headUpload(entry.url, { "Tus-Resumable": "1.0.0", ...(await this.authHeaders()) })
        .then(({ status: code, offset }) => {
          if (code === 404 || code === 410) {
            this.store.remove(entry.key);
            this.dropUnfinished(entry.key);
          } else if (code === 200 && offset !== null && entry.size > 0) {
            status.textContent = `${Math.floor((offset / entry.size) * 100)}% uploaded`;
          } else {
            status.textContent = "";
          }
        })
        .catch(() => {
          status.textContent = "";
        });
    }
  }

  dropUnfinished(key) {
    for (const row of this.unfinished.querySelectorAll("li")) if (row.dataset.key === key) row.remove();
    if (!this.unfinished.querySelector("li")) this.unfinishedSection.hidden = true;
  }

  addFiles(files) {
    for (const file of Array.from(files || [])) {
      const key = this.store.key(this.config.endpoint, file);
      const existing = this.items.find((item) => item.upload.storeKey === key && !["cancelled", "done", "error"].includes(item.upload.state));
      if (existing) {
        this.announce(`${file.name} is already in the list.`);
        existing.node.focus();
        continue;
      }
      this.dropUnfinished(key);
      const item = new Item(this, file);
      this.items.push(item);
      this.list.append(item.node);
    }
    this.pump();
  }

  /** Start queued uploads while fewer than `parallel` are running. */
  pump() {
    const running = this.items.filter((item) => ["starting", "uploading", "retrying"].includes(item.upload.state)).length;
    let free = this.config.parallel - running;
    for (const item of this.items) {
      if (free <= 0) break;
      if (item.queued) {
        item.queued = false;
        item.upload.start();
        free--;
      }
    }
  }
}

class Item {
  constructor(page, file) {
    this.page = page;
    this.file = file;
    this.queued = true;
    this.meter = new RateMeter();
    this.sent = 0;
    this.upload = new TusUpload(file, {
      endpoint: page.config.endpoint,
      chunkSize: page.config.chunkSize,
      token: page.config.token,
      store: page.store,
      onState: (state, detail) => this.onState(state, detail),
      onProgress: (sent, total) => this.onProgress(sent, total),
      onUrl: (url) => {
        this.node.dataset.url = url;
      },
    });
    const id = `upload-${page.items.length + 1}`;
    this.progress = el("progress", { max: String(Math.max(file.size, 1)), value: "0", "aria-labelledby": `${id}-name` });
    this.stats = el("p", { class: "stats" });
    this.status = el("p", { class: "status", text: "Waiting…" });
    this.pauseButton = el("button", { type: "button", class: "button", text: "Pause" });
    this.resumeButton = el("button", { type: "button", class: "button", text: "Resume", hidden: true });
    this.cancelButton = el("button", { type: "button", class: "button danger", text: "Cancel" });
    this.removeButton = el("button", { type: "button", class: "button", text: "Remove", hidden: true });
    for (const [button, label] of [
      [this.pauseButton, "Pause"],
      [this.resumeButton, "Resume"],
      [this.cancelButton, "Cancel"],
      [this.removeButton, "Remove"],
    ]) {
      button.setAttribute("aria-label", `${label} ${file.name}`);
    }
    this.pauseButton.addEventListener("click", () => this.upload.pause());
    this.resumeButton.addEventListener("click", () => {
      this.queued = false;
      this.upload.resume();
    });
    this.cancelButton.addEventListener("click", () => {
      if (this.queued) {
        this.queued = false;
        this.onState("cancelled", {});
        return;
      }
      this.upload.cancel();
    });
    this.removeButton.addEventListener("click", () => {
      this.node.remove();
      page.items = page.items.filter((other) => other !== this);
    });
    this.result = el("div", { class: "result", hidden: true });
    this.node = el(
      "li",
      { class: "upload", id, tabindex: "-1", "data-state": "queued", "data-bytes": "0" },
      el(
        "div",
        { class: "upload-head" },
        el("span", { class: "name", id: `${id}-name`, text: file.name }),
        el("span", { class: "size", text: formatBytes(file.size) }),
      ),
      this.progress,
      this.stats,
      this.status,
      el("div", { class: "actions" }, this.pauseButton, this.resumeButton, this.cancelButton, this.removeButton),
      this.result,
    );
  }

  onProgress(sent, total) {
    this.sent = sent;
    this.meter.add(sent);
    this.progress.value = sent;
    this.node.dataset.bytes = String(sent);
    const parts = [`${formatBytes(sent)} of ${formatBytes(total)}`];
    const rate = this.meter.rate;
    if (rate && this.upload.state === "uploading") {
      parts.push(`${formatBytes(rate)}/s`);
      if (rate > 0) parts.push(`${formatDuration((total - sent) / rate)} left`);
    }
    this.stats.textContent = parts.join(" · ");
  }

  onState(state, detail) {
    this.node.dataset.state = state;
    const name = this.file.name;
    const running = ["starting", "uploading", "retrying"].includes(state);
    this.pauseButton.hidden = !running;
    this.resumeButton.hidden = !(state === "paused" || (state === "error" && detail.error && detail.error.retryable));
    this.resumeButton.textContent = state === "error" ? "Retry" : "Resume";
    this.cancelButton.hidden = !(running || state === "paused" || state === "error" || state === "queued");
    this.removeButton.hidden = !["done", "cancelled", "error"].includes(state);
    if (state !== "uploading") this.meter.reset();
    if (this.upload.resumedFrom !== null) this.node.dataset.resumedFrom = String(this.upload.resumedFrom);
    let text = "";
    switch (state) {
      case "starting":
        text = "Starting…";
        break;
      case "uploading":
        text = this.upload.resumedFrom ? `Uploading (resumed at ${formatBytes(this.upload.resumedFrom)})` : "Uploading";
        break;
      case "paused":
        text = detail.message || "Paused";
        this.page.announce(`${name} paused.`);
        break;
      case "retrying": {
        const error = detail.error;
        const why = error.status === 0 ? "Connection lost" : `Server busy (${error.status})`;
        text = `${why}: retrying in ${formatDuration(detail.delay / 1000)} (attempt ${detail.attempt} of ${detail.attempts})`;
        this.page.announce(`${name}: ${text}`);
        break;
      }
      case "error": {
        const error = detail.error || {};
        text = describeStatus(error.status ?? -1, error.serverMessage || error.message || "", {
          maxSize: this.page.maxSize,
          formatBytes,
        });
        if (error.status === -1 || error.status === undefined) text = `Upload failed: ${error.message || error}`;
        this.node.classList.add("failed");
        this.page.announce(`${name}: ${text}`);
        break;
      }
      case "cancelling":
        text = "Cancelling…";
        break;
      case "cancelled":
        text = detail.message || "Cancelled";
        this.page.announce(`${name} cancelled.`);
        break;
      case "done":
        text = "Uploaded. Waiting for the server to verify it…";
        this.page.announce(`${name} uploaded.`);
        this.stats.textContent = `${formatBytes(this.file.size)} of ${formatBytes(this.file.size)}`;
        this.progress.value = Math.max(this.file.size, 1);
        this.node.dataset.bytes = String(this.file.size);
        this.follow();
        break;
      default:
        text = state;
    }
    this.status.textContent = text;
    this.page.pump();
  }

  /** Poll the JSON API until the server's verdict, then show it (and keep an eye out for the
   * video details, which may come a little later). */
  async follow() {
    const id = new URL(this.upload.url).pathname.split("/").filter(Boolean).pop();
    const url = `${this.page.config.api}/uploads/${encodeURIComponent(id)}`;
    let delay = 500;
    let afterReady = 0;
    for (;;) {
      let response = null;
      try {
        response = await fetch(url, { headers: await this.page.authHeaders(), cache: "no-store" });
      } catch {
        response = null; // a network error: try again
      }
      if (response && response.ok) {
        const body = await response.json();
        this.showResult(body);
        if (FINAL_STATES.has(body.state)) {
          const waitingForVideo = body.state === "ready" && "video" in body && body.video === null;
          if (!waitingForVideo || ++afterReady > 10) return;
        }
      } else if (response && [401, 403, 404].includes(response.status)) {
        this.status.textContent = `Uploaded, but its state cannot be shown: ${describeStatus(response.status, "")}`;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 1.5, 5000);
    }
  }

  showResult(body) {
    this.node.dataset.serverState = body.state;
    const rows = [["State", body.state]];
    if (body.sha256) rows.push(["SHA-256", body.sha256]);
    if (body.failure) rows.push(["Failure", body.failure]);
    const video = body.video && typeof body.video === "object" ? body.video : null;
    if (video) rows.push(...videoRows(video));
    const list = el("dl", { class: "details" });
    for (const [term, value] of rows) {
      const dd = el("dd", {}, term === "SHA-256" ? el("code", { class: "sha256", text: value }) : document.createTextNode(value));
      if (term === "State") dd.className = "server-state";
      list.append(el("dt", { text: term }), dd);
    }
    const children = [list];
    if (body.state === "ready" && body.download_url) {
      const href = new URL(body.download_url, `${this.page.config.api}/`).href;
      const existing = this.result.querySelector("video");
      const type = (body.metadata && body.metadata.filetype) || this.file.type || "";
      if (video || type.startsWith("video/") || type.startsWith("audio/")) {
        // Keep a player that is already there (re-rendering would stop it playing).
        children.push(existing || el("video", { controls: true, preload: "metadata", src: href, "aria-label": `Play ${this.file.name}` }));
      }
      children.push(el("p", {}, el("a", { href, download: this.file.name, class: "download", text: "Download" })));
    }
    this.result.replaceChildren(...children);
    this.result.hidden = false;
    const labels = { receiving: "Receiving", verifying: "Verifying…", ready: "Ready", failed: "Failed", expired: "Expired", terminated: "Cancelled" };
    const label = labels[body.state] || body.state;
    if (this.lastServerState !== body.state) {
      this.lastServerState = body.state;
      this.status.textContent = body.state === "ready" ? "Ready: verified by the server." : `Uploaded. Server: ${label}`;
      this.page.announce(`${this.file.name}: ${label}`);
    }
  }
}

function videoRows(video) {
  const rows = [];
  const label = (key) => key.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  const shown = (key, value) => {
    if (value === null || value === undefined || value === "") return null;
    if (key.includes("duration") && typeof value === "number") return formatDuration(value);
    if (key.includes("frame_rate") && typeof value === "number") return `${Number(value.toFixed(3))} fps`;
    if (Array.isArray(value)) return value.map((part) => (typeof part === "object" ? JSON.stringify(part) : String(part))).join(", ");
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  };
  const entries = Object.entries(video);
  const width = video.width;
  const height = video.height;
  for (const [key, value] of entries) {
    if ((key === "width" || key === "height") && width && height) continue;
    const text = shown(key, value);
    if (text !== null) rows.push([label(key), text]);
  }
  if (width && height && !("resolution" in video)) rows.push(["Resolution", `${width}×${height}`]);
  return rows;
}

const root = document.getElementById("upload-app");
if (root) window.uploadPage = new Page(root);
