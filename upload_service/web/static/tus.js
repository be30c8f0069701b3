// A small tus 1.0.0 client for browsers (creation, core, termination), no dependencies.
//
// One TusUpload sends one File in chunks (one PATCH per chunk, XMLHttpRequest for its upload
// progress events, which fetch does not give). It remembers the upload's URL in localStorage under
// the file's name, size and lastModified, so the same file selected again, after a reload too,
// resumes at the offset the server reports (HEAD) instead of starting over. Network errors and
// 409/423/429/5xx are retried with backoff, always re-reading the offset first.

export const TUS_VERSION = "1.0.0";
const STORE_PREFIX = "upload-service:tus:";
const DEFAULT_RETRY_DELAYS = [1000, 2000, 4000, 8000, 15000, 30000, 30000, 30000, 60000, 60000];
const RETRYABLE = new Set([409, 423, 429, 500, 502, 503, 504]);

/** A request that failed: `status` 0 for a network error or a stall, else the HTTP status. */
export class TusError extends Error {
  constructor(message, { status = 0, serverMessage = "", retryAfter = null } = {}) {
    super(message);
    this.name = "TusError";
    this.status = status;
    this.serverMessage = serverMessage;
    this.retryAfter = retryAfter;
  }

  get retryable() {
    return this.status === 0 || RETRYABLE.has(this.status);
  }
}

class Stale extends Error {} // the run that awaited was paused or cancelled meanwhile

export const ANOTHER_TAB = "Another tab of this browser is uploading this file; resume here once it is done or closed.";

// -- base64 of UTF-8 text (Upload-Metadata values) -----------------------------------------------

export function base64Utf8(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

// -- the resume store -----------------------------------------------------------------------------

/** Upload URLs by file (endpoint, name, size, lastModified), in localStorage. */
export class ResumeStore {
  constructor(storage = globalThis.localStorage) {
    this.storage = storage;
  }

  key(endpoint, file) {
    return `${STORE_PREFIX}${endpoint}::${file.name}::${file.size}::${file.lastModified}`;
  }

  get(key) {
    try {
      const value = JSON.parse(this.storage.getItem(key) || "null");
      return value && typeof value.url === "string" ? value : null;
    } catch {
      return null; // unparsable: as if absent
    }
  }

  put(key, entry) {
    try {
      this.storage.setItem(key, JSON.stringify(entry));
    } catch {
      // storage full or disabled: the upload goes on, it just cannot resume after a reload
    }
  }

  remove(key) {
    try {
      this.storage.removeItem(key);
    } catch {
      // nothing to do
    }
  }

  /** Every remembered upload of `endpoint`: [{key, url, name, size, lastModified, createdAt}]. */
  entries(endpoint) {
    const found = [];
    const prefix = `${STORE_PREFIX}${endpoint}::`;
    for (let index = 0; index < this.storage.length; index++) {
      const key = this.storage.key(index);
      if (key && key.startsWith(prefix)) {
        const entry = this.get(key);
        if (entry) found.push({ key, ...entry });
      }
    }
    return found;
  }
}

// -- HTTP ----------------------------------------------------------------------------------------

/**
 * One request with XMLHttpRequest. Resolves with {status, header(name), text} for any HTTP answer;
 * rejects with a TusError (status 0) on a network error, or when an upload makes no progress for
 * `stallTimeout` ms (a connection that died silently). `signal` aborts it (rejects with Stale).
 */
export function request(method, url, { headers = {}, body = null, onProgress, signal, stallTimeout = 0 } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url, true);
    for (const [name, value] of Object.entries(headers)) {
      if (value !== null && value !== undefined) xhr.setRequestHeader(name, value);
    }
    let stallTimer = null;
    const settle = () => {
      clearTimeout(stallTimer);
      if (signal) signal.removeEventListener("abort", onAbort);
    };
    const armStallTimer = () => {
      if (!stallTimeout) return;
      clearTimeout(stallTimer);
      stallTimer = setTimeout(() => {
        xhr.abort();
        settle();
        reject(new TusError(`no progress for ${Math.round(stallTimeout / 1000)} s`));
      }, stallTimeout);
    };
    const onAbort = () => {
      xhr.abort();
      settle();
      reject(new Stale());
    };
    if (signal) {
      if (signal.aborted) {
        reject(new Stale());
        return;
      }
      signal.addEventListener("abort", onAbort);
    }
    xhr.upload.onprogress = (event) => {
      armStallTimer();
      if (onProgress) onProgress(event.loaded);
    };
    xhr.onload = () => {
      settle();
      resolve({
        status: xhr.status,
        header: (name) => xhr.getResponseHeader(name),
        text: xhr.responseText || "",
      });
    };
    xhr.onerror = () => {
      settle();
      reject(new TusError("network error"));
    };
    xhr.ontimeout = xhr.onerror;
    armStallTimer();
    xhr.send(body);
  });
}

function retryAfterMs(response) {
  const value = response.header("Retry-After");
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return Math.min(seconds, 300) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.min(date - Date.now(), 300000));
}

/** The one-line reason of an error answer (text on tus routes, JSON on the API). */
function reasonOf(response) {
  const text = (response.text || "").trim();
  if (!text) return "";
  try {
    const parsed = JSON.parse(text);
    if (parsed && parsed.error && typeof parsed.error.message === "string") return parsed.error.message;
    if (parsed && typeof parsed.detail === "string") return parsed.detail;
  } catch {
    // not JSON: the tus routes answer a plain line
  }
  return text.split("\n", 1)[0].slice(0, 300);
}

/** What a person is told about an HTTP error (the server's reason follows where it has one). */
export function describeStatus(status, serverMessage, { maxSize = null, formatBytes = String } = {}) {
  const reason = serverMessage ? ` (${serverMessage})` : "";
  if (status === 413) {
    const limit = maxSize ? `: the largest upload allowed is ${formatBytes(maxSize)}` : "";
    return `The file is too large${limit}.${reason}`;
  }
  if (status === 415) return `This type of file is not allowed here.${reason}`;
  if (status === 401) return `Not signed in, or the sign-in has expired: reload the page from the application that opened it.${reason}`;
  if (status === 403) {
    if (/quota/i.test(serverMessage)) return `Your upload quota is used up.${reason}`;
    return `You are not allowed to do this.${reason}`;
  }
  if (status === 404 || status === 410) return `The upload is no longer on the server (it expired or was cancelled).${reason}`;
  if (status === 507) return `The server has no room for this file right now.${reason}`;
  if (status === 0) return `The connection to the server was lost${serverMessage ? ` (${serverMessage})` : ""}.`;
  return `The server answered ${status}.${reason}`;
}

// -- the upload ----------------------------------------------------------------------------------

/**
 * Events (each an optional callback in `options`):
 *   onState(state, detail)   "starting", "uploading", "paused", "retrying", "done", "error",
 *                            "cancelling", "cancelled"; detail: {message, delay, attempt, error}
 *   onProgress(bytesSent, bytesTotal)
 *   onUrl(url)               the upload's URL, once created or found
 */
export class TusUpload {
  constructor(file, options) {
    this.file = file;
    this.options = {
      endpoint: options.endpoint,
      chunkSize: options.chunkSize || 8 * 1024 * 1024,
      retryDelays: options.retryDelays || DEFAULT_RETRY_DELAYS,
      stallTimeout: options.stallTimeout ?? 60000,
      token: options.token || null, // string, or a function returning a string or a promise of one
      metadata: options.metadata || {},
      store: options.store || new ResumeStore(),
      onState: options.onState || (() => {}),
      onProgress: options.onProgress || (() => {}),
      onUrl: options.onUrl || (() => {}),
    };
    this.storeKey = this.options.store.key(this.options.endpoint, file);
    this.url = null;
    this.offset = 0;
    this.state = "idle";
    this.resumedFrom = null; // the offset the server reported for a remembered upload
    this._run = 0;
    this._controller = null;
    this._needHead = false;
    this._wake = null;
  }

  // -- public --

  start() {
    if (["starting", "uploading", "retrying", "done", "cancelling", "cancelled"].includes(this.state)) return;
    const run = ++this._run;
    this._controller = new AbortController();
    this._needHead = this.url !== null;
    this._main(run).catch((error) => {
      if (!(error instanceof Stale)) this._fail(run, error);
    });
  }

  resume() {
    this.start();
  }

  pause() {
    if (!["starting", "uploading", "retrying"].includes(this.state)) return;
    this._stop();
    this._setState("paused");
  }

  /** Stop, and delete the upload on the server (tus termination) and from the resume store. */
  async cancel() {
    if (["cancelling", "cancelled"].includes(this.state)) return;
    this._stop();
    this._setState("cancelling");
    this.options.store.remove(this.storeKey);
    if (this.url) {
      try {
        await deleteUpload(this.url, await this._headers());
      } catch (error) {
        this._setState("cancelled", { message: `Cancelled here, but the server could not be told: ${error.message}` });
        return;
      }
    }
    this._setState("cancelled");
  }

  // -- the run --

  async _main(run) {
    this._setState("starting");
    // One tab at a time uploads a file: the run holds a Web Lock named by the file's resume key
    // (shared by every tab of this origin) for as long as it runs. A second tab finds it taken
    // and yields: paused, saying why; its Resume tries again. Without the API (an old browser, a
    // page not served over https or from localhost) the tabs would fight over the upload's lock
    // on the server, as before.
    const locks = globalThis.navigator?.locks;
    if (!locks) return this._upload(run);
    return locks.request(`${STORE_PREFIX}${this.storeKey}`, { ifAvailable: true }, async (lock) => {
      if (lock === null) {
        this._check(run);
        this._stop();
        this._setState("paused", { message: ANOTHER_TAB });
        return;
      }
      await this._upload(run);
    });
  }

  async _upload(run) {
    if (this.url === null) {
      await this._retrying(run, () => this._findOrCreate(run));
    }
    while (this.offset < this.file.size) {
      await this._retrying(run, () => this._sendChunk(run));
    }
    this._check(run);
    this.options.store.remove(this.storeKey); // finished: nothing left to resume
    this._setState("done");
  }

  /** Calls `step` until it succeeds, waiting between attempts that failed retryably. */
  async _retrying(run, step) {
    const delays = this.options.retryDelays;
    let conflicts = 0;
    let refreshed = false;
    for (let attempt = 0; ; attempt++) {
      try {
        await step();
        return;
      } catch (error) {
        if (error instanceof TusError && error.status === 401 && typeof this.options.token === "function" && !refreshed) {
          this._check(run);
          refreshed = true; // the token may have expired: the next request asks the function again
          this._needHead = this.url !== null;
          attempt--;
          continue;
        }
        if (error instanceof Stale || !(error instanceof TusError) || !error.retryable) throw error;
        this._check(run);
        this._needHead = this.url !== null; // whatever happened, ask the server where we are
        if (error.status === 409 && ++conflicts <= 3) {
          attempt--; // a stale offset (the server committed more meanwhile): re-read it at once
          continue;
        }
        if (attempt >= delays.length) throw error;
        const delay = error.retryAfter ?? delays[attempt];
        this._setState("retrying", { delay, attempt: attempt + 1, attempts: delays.length, error });
        await this._sleep(run, delay);
        this._setState("uploading");
      }
    }
  }

  async _findOrCreate(run) {
    const remembered = this.options.store.get(this.storeKey);
    if (remembered) {
      const response = await request("HEAD", remembered.url, { headers: await this._headers(), signal: this._signal() });
      this._check(run);
      const length = Number(response.header("Upload-Length"));
      const offset = Number(response.header("Upload-Offset"));
      if (response.status === 200 && length === this.file.size && Number.isInteger(offset)) {
        this.url = remembered.url;
        this.offset = offset;
        this.resumedFrom = offset;
        this.options.onUrl(this.url);
        this.options.onProgress(this.offset, this.file.size);
        this._setState("uploading", { message: `Resuming at ${offset} bytes` });
        return;
      }
      if (response.status !== 200 && RETRYABLE.has(response.status)) throw this._httpError(response);
      this.options.store.remove(this.storeKey); // gone (404/410), someone else's, or another file
    }
    await this._create(run);
  }

  async _create(run) {
    const metadata = { filename: this.file.name, filetype: this.file.type, ...this.options.metadata };
    const encoded = Object.entries(metadata)
      .filter(([, value]) => value !== null && value !== undefined && value !== "")
      .map(([key, value]) => `${key} ${base64Utf8(String(value))}`)
      .join(",");
    const headers = { ...(await this._headers()), "Upload-Length": String(this.file.size) };
    if (encoded) headers["Upload-Metadata"] = encoded;
    const response = await request("POST", this.options.endpoint, { headers, signal: this._signal() });
    this._check(run);
    if (response.status !== 201) throw this._httpError(response);
    const location = response.header("Location");
    if (!location) throw new TusError("the server created the upload but did not say where (no Location)");
    this.url = new URL(location, new URL(this.options.endpoint, globalThis.location?.href)).href;
    this.offset = Number(response.header("Upload-Offset") || 0);
    this.options.store.put(this.storeKey, {
      url: this.url,
      name: this.file.name,
      size: this.file.size,
      lastModified: this.file.lastModified,
      createdAt: new Date().toISOString(),
    });
    this.options.onUrl(this.url);
    this._setState("uploading");
  }

  async _head(run) {
    const response = await request("HEAD", this.url, { headers: await this._headers(), signal: this._signal() });
    this._check(run);
    if (response.status !== 200) throw this._httpError(response);
    const offset = Number(response.header("Upload-Offset"));
    if (!Number.isInteger(offset)) throw new TusError("the server did not say where to resume (no Upload-Offset)");
    this.offset = offset;
    this._needHead = false;
    this.options.onProgress(this.offset, this.file.size);
  }

  async _sendChunk(run) {
    if (this._needHead) await this._head(run);
    if (this.offset >= this.file.size) return;
    this._setState("uploading");
    const start = this.offset;
    const end = Math.min(start + this.options.chunkSize, this.file.size);
    const headers = {
      ...(await this._headers()),
      "Upload-Offset": String(start),
      "Content-Type": "application/offset+octet-stream",
    };
    const response = await request("PATCH", this.url, {
      headers,
      body: this.file.slice(start, end),
      signal: this._signal(),
      stallTimeout: this.options.stallTimeout,
      onProgress: (loaded) => this.options.onProgress(start + Math.min(loaded, end - start), this.file.size),
    });
    this._check(run);
    if (response.status !== 204) throw this._httpError(response);
    const offset = Number(response.header("Upload-Offset"));
    if (!Number.isInteger(offset) || offset < start) {
      throw new TusError("the server's answer has no valid Upload-Offset", { status: 500 });
    }
    this.offset = offset;
    this.options.onProgress(this.offset, this.file.size);
  }

  // -- helpers --

  async _headers() {
    const headers = { "Tus-Resumable": TUS_VERSION };
    let token = this.options.token;
    if (typeof token === "function") token = await token();
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  _httpError(response) {
    const serverMessage = reasonOf(response);
    return new TusError(serverMessage || `HTTP ${response.status}`, {
      status: response.status,
      serverMessage,
      retryAfter: retryAfterMs(response),
    });
  }

  _signal() {
    return this._controller ? this._controller.signal : undefined;
  }

  _check(run) {
    if (run !== this._run) throw new Stale();
  }

  _stop() {
    this._run++;
    if (this._controller) this._controller.abort();
    if (this._wake) this._wake();
  }

  _sleep(run, ms) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(done, ms);
      const online = () => done(); // the network is back: try at once
      function done() {
        clearTimeout(timer);
        globalThis.removeEventListener?.("online", online);
        resolve();
      }
      globalThis.addEventListener?.("online", online);
      this._wake = () => {
        clearTimeout(timer);
        globalThis.removeEventListener?.("online", online);
        reject(new Stale());
      };
    }).then(() => this._check(run));
  }

  async _fail(run, error) {
    if (run !== this._run) return;
    const status = error instanceof TusError ? error.status : -1;
    // A file the server refused by its first bytes (415) stays at offset 0 on the server, for
    // the client to delete: do so, and forget it.
    if (status === 415 && this.url) {
      this.options.store.remove(this.storeKey);
      deleteUpload(this.url, await this._headers()).catch(() => {});
      this.url = null;
    }
    if (status === 404 || status === 410) {
      this.options.store.remove(this.storeKey);
      this.url = null;
    }
    this._setState("error", { error });
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.options.onState(state, detail);
  }
}

/** DELETE an upload (tus termination), retrying while it is busy or the server is unavailable. */
export async function deleteUpload(url, headers, attempts = 5) {
  for (let attempt = 1; ; attempt++) {
    let response;
    try {
      response = await request("DELETE", url, { headers });
    } catch (error) {
      if (attempt >= attempts) throw error;
      await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
      continue;
    }
    if ([204, 404, 410].includes(response.status)) return response.status;
    if (!RETRYABLE.has(response.status) || attempt >= attempts) {
      throw new TusError(reasonOf(response) || `HTTP ${response.status}`, { status: response.status });
    }
    await new Promise((resolve) => setTimeout(resolve, retryAfterMs(response) ?? 500 * attempt));
  }
}

/** HEAD an upload: {status, offset, length} (offset/length null when absent). */
export async function headUpload(url, headers) {
  const response = await request("HEAD", url, { headers });
  const number = (name) => {
    const value = response.header(name);
    return value === null ? null : Number(value);
  };
  return { status: response.status, offset: number("Upload-Offset"), length: number("Upload-Length") };
}

/** The tus server's limits from OPTIONS: {maxSize} (null when it advertises none). */
export async function serverLimits(endpoint) {
  const response = await request("OPTIONS", endpoint, {});
  const value = response.header("Tus-Max-Size");
  return { maxSize: value ? Number(value) : null };
}
