/**
 * outboxd-client — the browser (and node) client of outboxd: events your
 * database committed, in commit order, each once, resumed after any
 * disconnect. No runtime dependencies.
 *
 * ```js
 * import { OutboxdClient } from "outboxd-client";
 *
 * const client = new OutboxdClient({
 *   url: "wss://app.example/ws/connect",      // default: the page's host
 *   getToken: async () => fetchFreshToken(),  // before every (re)connect and refresh
 *   since: stateSeq, epoch: stateEpoch,       // outbox.head() and outbox.epoch(), read with your state
 *   topics: ["task_event"],                   // optional filter (default: every topic)
 * });
 * client.on("task_event", (ev) => apply(ev.data)); // {type, seq, id, timestamp, data}
 * client.onState((state, info) => show(state));     // connecting | open | reconnecting | closed
 * client.onResync((oldestSeq, reason) => reloadState());
 * client.connect();
 * ```
 *
 * Guarantees, with outboxd: after any disconnect the client reconnects with
 * since=<last seq> and receives exactly the events it missed, in order; events
 * are deduplicated by seq. It sends the stream's epoch with since, so a
 * database that was restored or recreated answers resync_required (reason
 * "epoch") instead of replaying other events under the same seqs.
 *
 * Tokens: before the token expires the client asks getToken for a new one
 * and hands it over in band ({"type":"refresh"}): the session goes on, with
 * the new token's roles from the answered seq. 4001 (expired) asks getToken
 * and reconnects at once; 4003 (revoked by the app: outbox.disconnect) asks
 * getToken too and stops if it gets none; 4008 (too far behind), 1001
 * (server shutdown) and 1012 reconnect at once with since; anything else
 * reconnects with jittered exponential backoff (500 ms doubling to 5 s), and
 * at once when the browser comes back online or the page becomes visible.
 *
 * Transport: WebSocket, with the token as a subprotocol (never in the URL).
 * With transport "auto" (the default) two WebSocket opens that fail before
 * any worked switch the client to Server-Sent Events at /ws/sse (a proxy that
 * breaks upgrades); "sse" forces it. Over SSE the token goes in an
 * Authorization header through fetch.
 */

/**
 * An event as outboxd sends it: `type` is its topic.
 * @template [T=any]
 * @typedef {object} OutboxdEvent
 * @property {string} type the event's topic
 * @property {number} seq its position in the stream (gap-free, commit order)
 * @property {number} id the row's id in outbox.events
 * @property {string} timestamp when it was inserted (RFC 3339)
 * @property {T} data its payload
 */

/**
 * A control frame: welcome, subscribed, refreshed, resync_required,
 * notification, error, pong.
 * @typedef {object} OutboxdMessage
 * @property {string} type
 * @property {any} [data]
 */

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} ConnectionState */

/**
 * What came with a state change (the fields that apply).
 * @typedef {object} StateInfo
 * @property {number | null} [since] the last seq received
 * @property {number} [attempt] reconnect attempt
 * @property {number} [delay] ms until the next attempt
 * @property {number} [code] the close code
 * @property {string} [reason] the close reason, or why an attempt failed
 * @property {number} [status] the HTTP status of a refused SSE request
 * @property {"websocket" | "sse"} [transport]
 * @property {string | null} [epoch]
 * @property {string} [user] the session's user (open)
 * @property {string[]} [roles] the session's roles (open)
 */

/** @typedef {"epoch" | "ahead" | "retention" | "too_far"} ResyncReason */

/**
 * @typedef {object} OutboxdOptions
 * @property {() => Promise<string | null | undefined> | string | null | undefined} getToken
 *   a fresh token for outboxd; called before every (re)connect and refresh. null: stop (after 4003).
 * @property {string} [url] the WebSocket endpoint (default: ws(s)://<page host>/ws/connect)
 * @property {string} [sseURL] the SSE endpoint (default: url with /ws/sse)
 * @property {number} [since] the seq your state was read at (outbox.head())
 * @property {string} [epoch] outbox.epoch(), read in the same transaction as since
 * @property {string[] | null} [topics] topic filter (default: every topic)
 * @property {(ev: OutboxdEvent) => void} [onEvent] every event (also: on("*", …))
 * @property {(msg: OutboxdMessage) => void} [onMessage] every control frame
 * @property {(state: ConnectionState, info: StateInfo) => void} [onState] (also: onState(…))
 * @property {(oldestSeq: number, reason: ResyncReason) => void} [onResync]
 *   your since cannot be replayed: reload your state (live events continue)
 * @property {"protocol" | "query"} [tokenIn] where the token travels (default: subprotocol)
 * @property {number} [refreshBefore] ms before exp to refresh in band (30000; 0: never)
 * @property {"auto" | "websocket" | "sse"} [transport]
 * @property {number} [minDelay] first reconnect delay ceiling, ms (500)
 * @property {number} [maxDelay] largest reconnect delay ceiling, ms (5000)
 * @property {number} [pingInterval] ms between pings (25000)
 * @property {any} [WebSocket] a WebSocket constructor (default: the global one)
 * @property {typeof fetch} [fetch] a fetch (default: the global one), for SSE
 */

/** @returns {string} */
function defaultURL() {
  if (typeof location === "undefined") return "ws://127.0.0.1:8002/ws/connect";
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/connect";
}

/**
 * tokenExp reads a JWT's exp (unix seconds; 0 if none or unreadable). The
 * token is not verified here: the server does that.
 * @param {string} token
 * @returns {number}
 */
export function tokenExp(token) {
  try {
    let part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    while (part.length % 4) part += "=";
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp === "number" ? exp : 0;
  } catch {
    return 0;
  }
}

/**
 * @template {any[]} A
 * @param {Set<(...args: A) => void>} set
 * @param {A} args
 */
function emit(set, ...args) {
  for (const fn of [...set]) {
    try {
      fn(...args);
    } catch (e) {
      console.error(e);
    }
  }
}

const RECONNECT_AT_ONCE = new Set([4001, 4003, 4008, 1001, 1012]);

export class OutboxdClient {
  /** A JWT's exp, unverified (0: none). */
  static tokenExp = tokenExp;

  /** @param {OutboxdOptions} opts */
  constructor(opts) {
    if (!opts || typeof opts.getToken !== "function") throw new Error("OutboxdClient: getToken is required");
    /** @type {string} */
    this.url = opts.url || defaultURL();
    this.getToken = opts.getToken;
    /** @type {"protocol" | "query"} */
    this.tokenIn = opts.tokenIn === "query" ? "query" : "protocol";
    /** The last seq received (null: none yet); the client resumes after it. @type {number | null} */
    this.lastSeq = typeof opts.since === "number" ? opts.since : null;
    /** @type {string | null} */
    this.epoch = typeof opts.epoch === "string" && opts.epoch !== "" ? opts.epoch : null;
    /** @type {string[] | null} */
    this.topics = Array.isArray(opts.topics) ? opts.topics.slice() : null;
    this.minDelay = opts.minDelay || 500;
    this.maxDelay = opts.maxDelay || 5000;
    this.pingInterval = opts.pingInterval || 25000;
    this.refreshBefore = typeof opts.refreshBefore === "number" ? opts.refreshBefore : 30000;
    this.WebSocket = opts.WebSocket || globalThis.WebSocket;
    /** @type {typeof fetch | null} */
    this.fetch = opts.fetch || (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : null);
    /** @type {"auto" | "websocket" | "sse"} */
    this.transport = opts.transport === "sse" || opts.transport === "websocket" ? opts.transport : "auto";
    this.sseURL = opts.sseURL || this.url.replace(/^ws/, "http").replace(/\/ws\/connect(\?|$)/, "/ws/sse$1");
    /** @type {ConnectionState} */
    this.state = "closed";
    this.attempt = 0;

    /** @private @type {Map<string, Set<(ev: OutboxdEvent) => void>>} */
    this._handlers = new Map();
    /** @private @type {Set<(state: ConnectionState, info: StateInfo) => void>} */
    this._stateHandlers = new Set();
    /** @private @type {Set<(oldestSeq: number, reason: ResyncReason) => void>} */
    this._resyncHandlers = new Set();
    /** @private @type {Set<(msg: OutboxdMessage) => void>} */
    this._messageHandlers = new Set();
    if (opts.onEvent) this.on("*", opts.onEvent);
    if (opts.onState) this.onState(opts.onState);
    if (opts.onResync) this.onResync(opts.onResync);
    if (opts.onMessage) this.onMessage(opts.onMessage);

    // _useSSE: this client streams over SSE (forced, or after WebSocket
    // opens kept failing before any worked: a proxy that breaks upgrades).
    /** @private */
    this._useSSE = this.transport === "sse";
    /** @private */
    this._wsFailures = 0;
    /** @private */
    this._wsWorked = false;
    /** @private */
    this._welcomed = false;
    /** @private */
    this._revoked = false;
    /** @private */
    this._stopped = true;
    /** @private @type {AbortController | null} */
    this._abort = null;
    /** @private @type {any} */
    this._ws = null;
    /** @private @type {any} */
    this._timer = null;
    /** @private @type {any} */
    this._ping = null;
    /** @private @type {any} */
    this._refreshTimer = null;
    /** @private */
    this._tokenExp = 0;
    /** @private */
    this._wake = () => {
      if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
      this.reconnectNow();
    };
  }

  /**
   * Call handler for every event of topic ("*": every event), in seq order.
   * @template [T=any]
   * @param {string} topic
   * @param {(ev: OutboxdEvent<T>) => void} handler
   * @returns {() => void} removes the handler
   */
  on(topic, handler) {
    let set = this._handlers.get(topic);
    if (!set) this._handlers.set(topic, (set = new Set()));
    const h = /** @type {(ev: OutboxdEvent) => void} */ (handler);
    set.add(h);
    return () => set.delete(h);
  }

  /**
   * Call handler at every connection state change.
   * @param {(state: ConnectionState, info: StateInfo) => void} handler
   * @returns {() => void} removes the handler
   */
  onState(handler) {
    this._stateHandlers.add(handler);
    return () => this._stateHandlers.delete(handler);
  }

  /**
   * Call handler when the server cannot replay from your since: reload your
   * state (and its head); live events continue meanwhile.
   * @param {(oldestSeq: number, reason: ResyncReason) => void} handler
   * @returns {() => void} removes the handler
   */
  onResync(handler) {
    this._resyncHandlers.add(handler);
    return () => this._resyncHandlers.delete(handler);
  }

  /**
   * Call handler for every control frame (welcome, subscribed, refreshed,
   * resync_required, notification, error, pong).
   * @param {(msg: OutboxdMessage) => void} handler
   * @returns {() => void} removes the handler
   */
  onMessage(handler) {
    this._messageHandlers.add(handler);
    return () => this._messageHandlers.delete(handler);
  }

  /** Start (or restart) the connection loop. */
  connect() {
    /** @private */
    this._stopped = false;
    clearTimeout(this._timer);
    if (typeof addEventListener === "function") {
      addEventListener("online", this._wake);
      if (typeof document !== "undefined") document.addEventListener("visibilitychange", this._wake);
    }
    this._open();
  }

  /**
   * Retry now if the client is waiting to reconnect (the network came back,
   * the page became visible, your app saw the server again).
   */
  reconnectNow() {
    if (this._stopped || this.state !== "reconnecting" || this._timer === null) return;
    clearTimeout(this._timer);
    /** @private */
    this._timer = null;
    this._open();
  }

  /**
   * Replace the topic filter (null: every topic). Sent at once when connected
   * and kept for every reconnect; the server answers "subscribed" with the
   * seq it applies from.
   * @param {string[] | null} topics
   */
  subscribe(topics) {
    this.topics = Array.isArray(topics) ? topics.slice() : null;
    if (this._ws && this._ws.readyState === 1) {
      this._ws.send(JSON.stringify({ type: "subscribe", data: { topics: this.topics } }));
    } else if (this._abort) {
      // SSE is one way: resume the stream with the new filter from the
      // last seq received (nothing is lost, nothing repeated).
      const abort = this._abort;
      /** @private */
      this._abort = null;
      abort.abort();
      clearInterval(this._ping);
      this.attempt = Math.max(this.attempt, 1);
      this._retry({ reason: "subscribe", transport: "sse" }, 0);
    }
  }

  /**
   * Stop for good (no reconnect).
   * @param {StateInfo} [info]
   */
  close(info) {
    /** @private */
    this._stopped = true;
    clearTimeout(this._timer);
    /** @private */
    this._timer = null;
    clearInterval(this._ping);
    clearTimeout(this._refreshTimer);
    if (typeof removeEventListener === "function") {
      removeEventListener("online", this._wake);
      if (typeof document !== "undefined") document.removeEventListener("visibilitychange", this._wake);
    }
    if (this._ws) this._ws.close(1000, "client closed");
    /** @private */
    this._ws = null;
    if (this._abort) this._abort.abort();
    /** @private */
    this._abort = null;
    this._setState("closed", Object.assign({}, info, { since: this.lastSeq }));
  }

  /**
   * @param {ConnectionState} state
   * @param {StateInfo} [info]
   * @private
   */
  _setState(state, info) {
    this.state = state;
    emit(this._stateHandlers, state, info || {});
  }

  /** @private @param {number} exp arms the in-band refresh refreshBefore ms before exp */
  _scheduleRefresh(exp) {
    clearTimeout(this._refreshTimer);
    /** @private */
    this._refreshTimer = null;
    if (!exp || this.refreshBefore <= 0) return;
    const wait = Math.max(1000, exp * 1000 - Date.now() - this.refreshBefore);
    /** @private */
    this._refreshTimer = setTimeout(() => this._refresh(), Math.min(wait, 2147483647));
  }

  /** @private */
  async _refresh() {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return;
    let token;
    try {
      token = await this.getToken();
    } catch {
      return; // the server closes with 4001 at exp; the reconnect asks again
    }
    if (this._ws !== ws || ws.readyState !== 1 || !token) return;
    ws.send(JSON.stringify({ type: "refresh", data: { token } }));
  }

  /** @private */
  async _open() {
    /** @private */
    this._timer = null;
    this._setState(this.attempt === 0 ? "connecting" : "reconnecting", { attempt: this.attempt, since: this.lastSeq });
    let token;
    try {
      token = await this.getToken();
    } catch (e) {
      if (this._revoked) return this.close({ code: 4003, reason: "revoked; getToken failed: " + e });
      return this._retry({ reason: "getToken failed: " + e });
    }
    if (this._stopped) return;
    if (this._revoked && !token) return this.close({ code: 4003, reason: "revoked; no new token" });
    if (!token) return this.close({ reason: "getToken returned no token" }); // logged out
    /** @private */
    this._revoked = false;
    /** @private */
    this._tokenExp = tokenExp(token);
    /** @type {string[]} */
    const params = [];
    if (this.tokenIn === "query") params.push("token=" + encodeURIComponent(token));
    if (this.lastSeq !== null) {
      params.push("since=" + this.lastSeq);
      if (this.epoch !== null) params.push("epoch=" + encodeURIComponent(this.epoch));
    }
    if (this.topics !== null) params.push("topics=" + this.topics.map(encodeURIComponent).join(","));
    if (this._useSSE) return this._openSSE(token, params);
    params.push("batch=1"); // several events per frame, one per line: fewer frames under load
    const url = this.url + (params.length ? (this.url.indexOf("?") < 0 ? "?" : "&") + params.join("&") : "");
    let ws;
    try {
      // The token travels as a subprotocol by default: it stays out of
      // URLs, and so out of proxy access logs and browser history.
      ws = this.tokenIn === "query" ? new this.WebSocket(url) : new this.WebSocket(url, ["outboxd.v1", "outboxd.token." + token]);
    } catch (e) {
      this._wsFailed();
      return this._retry({ reason: String(e) });
    }
    /** @private */
    this._ws = ws;
    /** @private */
    this._welcomed = false;
    ws.onmessage = (/** @type {{data: any}} */ m) => {
      for (const line of String(m.data).split("\n")) if (this._ws === ws) this._frame(line);
    };
    ws.onclose = (/** @type {{code: number, reason: string}} */ e) => {
      if (this._ws !== ws) return;
      clearInterval(this._ping);
      clearTimeout(this._refreshTimer);
      /** @private */
      this._ws = null;
      if (!this._welcomed) this._wsFailed();
      this._closed(e.code, e.reason);
    };
  }

  // _wsFailed counts a WebSocket open that failed before its welcome; in
  // "auto" two in a row switch the client to SSE — unless a WebSocket
  // session has worked before: then the failures are an outage (a restart,
  // a network cut), not a proxy that breaks upgrades.
  /** @private */
  _wsFailed() {
    this._wsFailures++;
    if (this.transport === "auto" && !this._wsWorked && this._wsFailures >= 2 && this.fetch) this._useSSE = true;
  }

  /**
   * A session's end, whatever its transport.
   * @param {number} code
   * @param {string} reason
   * @private
   */
  _closed(code, reason) {
    if (this._stopped) return;
    /** @type {StateInfo} */
    const info = { code, reason, since: this.lastSeq, transport: this._useSSE ? "sse" : "websocket" };
    if (code === 4003) this._revoked = true; // the app changed this user's rights: ask it for a token
    if (RECONNECT_AT_ONCE.has(code)) {
      this.attempt = Math.max(this.attempt, 1);
      return this._retry(info, 0); // at once, with since (and a fresh token)
    }
    this._retry(info);
  }

  /**
   * Stream GET /ws/sse with fetch (the token in an Authorization header,
   * which EventSource could not send) and parse its events: each one's data
   * is the envelope a WebSocket frame would carry; "event: close" carries
   * the close code.
   * @param {string} token
   * @param {string[]} params
   * @private
   */
  async _openSSE(token, params) {
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    /** @private */
    this._abort = abort;
    const url = this.sseURL + (params.length ? (this.sseURL.indexOf("?") < 0 ? "?" : "&") + params.join("&") : "");
    let resp;
    try {
      if (!this.fetch) throw new Error("no fetch");
      resp = await this.fetch(url, {
        headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" },
        signal: abort ? abort.signal : undefined, cache: "no-store",
      });
    } catch (e) {
      if (this._abort === abort) this._retry({ reason: "sse: " + e, transport: "sse" });
      return;
    }
    if (!resp.ok || !resp.body) {
      return this._retry({ reason: "sse: HTTP " + resp.status, status: resp.status, transport: "sse" });
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let ev = { event: "", data: "" };
    /** @type {{code: number, reason: string} | null} */
    let closed = null;
    try {
      for (;;) {
        const r = await reader.read();
        if (r.done || this._abort !== abort) break;
        buf += decoder.decode(r.value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line === "") {
            if (ev.event === "close") {
              try {
                closed = JSON.parse(ev.data);
              } catch {
                closed = { code: 1006, reason: "bad close event" };
              }
            } else if (ev.data !== "") {
              this._frame(ev.data);
            }
            ev = { event: "", data: "" };
          } else if (line.startsWith("event: ")) {
            ev.event = line.slice(7);
          } else if (line.startsWith("data: ")) {
            ev.data = line.slice(6);
          }
        }
        if (closed) break;
      }
    } catch {
      // the stream broke: reconnect below
    }
    if (this._abort !== abort) return; // closed by the client, or replaced
    /** @private */
    this._abort = null;
    if (abort) abort.abort();
    clearInterval(this._ping);
    this._closed(closed ? closed.code : 1006, closed ? closed.reason : "stream ended");
  }

  /**
   * @param {StateInfo} info
   * @param {number} [delay] ms; default: jittered exponential backoff
   * @private
   */
  _retry(info, delay) {
    if (this._stopped) return;
    this.attempt++;
    if (delay === undefined) {
      const cap = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this.attempt - 1));
      delay = Math.round(cap / 2 + (Math.random() * cap) / 2); // jitter
    }
    this._setState("reconnecting", Object.assign(info || {}, { attempt: this.attempt, delay, since: this.lastSeq }));
    /** @private */
    this._timer = setTimeout(() => this._open(), delay);
  }

  /** @private @param {string} raw one frame (one line of a batched frame) */
  _frame(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (typeof msg.seq === "number") {
      if (this.lastSeq !== null && msg.seq <= this.lastSeq) return; // duplicate
      this.lastSeq = msg.seq;
      const ev = /** @type {OutboxdEvent} */ (msg);
      const byTopic = this._handlers.get(ev.type);
      if (byTopic) emit(byTopic, ev);
      const all = this._handlers.get("*");
      if (all) emit(all, ev);
      return;
    }
    if (msg.type === "welcome") {
      this.attempt = 0;
      /** @private */
      this._welcomed = true;
      if (!this._useSSE) {
        /** @private */
        this._wsFailures = 0;
        /** @private */
        this._wsWorked = true;
      }
      // In another history the old seq means nothing: live from the head,
      // and resync_required (reason "epoch") follows.
      if (this.lastSeq === null || (this.epoch !== null && msg.data.epoch !== this.epoch)) this.lastSeq = msg.data.head_seq;
      this.epoch = msg.data.epoch || null;
      clearInterval(this._ping);
      if (!this._useSSE) {
        /** @private */
        this._ping = setInterval(() => {
          if (this._ws && this._ws.readyState === 1) this._ws.send('{"type":"ping"}');
        }, this.pingInterval);
      }
      this._setState("open", {
        since: this.lastSeq, epoch: this.epoch, user: msg.data.user_id, roles: msg.data.roles,
        transport: this._useSSE ? "sse" : "websocket",
      });
      // SSE is one way: no in-band refresh; the server's 4001 at exp makes
      // the client reconnect with a new token.
      if (!this._useSSE) this._scheduleRefresh(this._tokenExp);
    } else if (msg.type === "refreshed") {
      this._scheduleRefresh(msg.data.exp);
    } else if (msg.type === "resync_required") {
      emit(this._resyncHandlers, msg.data.oldest_seq, msg.data.reason);
    }
    emit(this._messageHandlers, msg);
  }
}

export default OutboxdClient;
