/*
 * outboxd-client.js — a small, dependency-free WebSocket client for outboxd.
 * Copy it into your frontend. Works as a classic <script> (window.OutboxdClient)
 * and with CommonJS/bundlers (module.exports).
 *
 *   const client = new OutboxdClient({
 *     url: "wss://app.example/ws/connect",     // default: same host as the page
 *     getToken: async () => fetchFreshToken(), // called before every (re)connect
 *     since: stateSeq,                         // optional: seq your state was read at (outbox.head())
 *     epoch: stateEpoch,                       // with since: outbox.epoch(), read in the same transaction
 *     onEvent: (ev) => apply(ev),              // {type, seq, id, timestamp, data}, in order, once each
 *     onResync: (oldestSeq, reason) => reloadState(), // your since cannot be replayed: reload, live events continue
 *                                              // reason: epoch | ahead | retention | too_far
 *     onState: (state, info) => show(state),   // connecting | open | reconnecting | closed
 *     onMessage: (msg) => {},                  // control frames: welcome, notification, error, pong
 *     tokenIn: "protocol",                     // default: Sec-WebSocket-Protocol outboxd.token.<JWT>; "query": ?token=
 *     topics: ["task_event"],                  // optional topic filter (default: every topic)
 *     refreshBefore: 30000,                    // ms before the token's exp to refresh it in band (0: never)
 *     transport: "auto",                       // "websocket", "sse" (Server-Sent Events at /ws/sse), or "auto":
 *                                              // WebSocket, and SSE after two WebSocket opens fail
 *   });
 *   client.subscribe(["task_event", "system_event"]); // change it at run time (null: every topic);
 *                                                     // kept across reconnects
 *   client.connect();
 *
 * Guarantees, with outboxd: after any disconnect the client reconnects with
 * since=<last seq> and receives exactly the events it missed, in order; events
 * are deduplicated by seq. It sends the epoch of the stream with since, so a
 * database that was restored or recreated answers resync_required (reason
 * "epoch") instead of replaying other events under the same seqs. Close codes:
 * Before the token expires the client asks getToken for a new one and hands
 * it to the server in band ({"type":"refresh"}): the session goes on, with
 * the new token's roles from the answered seq, and is not cut at the old exp.
 * If the refresh is refused, the server closes at the old exp with 4001 and
 * the client reconnects as below.
 * 4001 (token expired) asks getToken for a fresh token and reconnects at once;
 * 4003 (revoked by the app: outbox.disconnect) asks getToken too, and stops
 * if it gets none;
 * 4008 (too far behind), 1001 (server shutdown) and 1012 (history changed)
 * reconnect at once with since; anything else reconnects with jittered
 * exponential backoff.
 */
(function (root) {
  "use strict";

  function defaultURL() {
    if (typeof location === "undefined") return "ws://127.0.0.1:8002/ws/connect";
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/connect";
  }

  function OutboxdClient(opts) {
    if (!(this instanceof OutboxdClient)) return new OutboxdClient(opts);
    opts = opts || {};
    if (typeof opts.getToken !== "function") throw new Error("OutboxdClient: getToken is required");
    this.url = opts.url || defaultURL();
    this.getToken = opts.getToken;
    this.tokenIn = opts.tokenIn === "query" ? "query" : "protocol";
    this.lastSeq = typeof opts.since === "number" ? opts.since : null;
    this.epoch = typeof opts.epoch === "string" && opts.epoch !== "" ? opts.epoch : null;
    this.topics = Array.isArray(opts.topics) ? opts.topics.slice() : null;
    this.onEvent = opts.onEvent || function () {};
    this.onMessage = opts.onMessage || function () {};
    this.onState = opts.onState || function () {};
    this.onResync = opts.onResync || function () {};
    this.minDelay = opts.minDelay || 500;
    this.maxDelay = opts.maxDelay || 15000;
    this.pingInterval = opts.pingInterval || 25000;
    this.refreshBefore = typeof opts.refreshBefore === "number" ? opts.refreshBefore : 30000;
    this.WebSocket = opts.WebSocket || root.WebSocket;
    this.fetch = opts.fetch || (typeof root.fetch === "function" ? root.fetch.bind(root) : null);
    this.transport = opts.transport === "sse" || opts.transport === "websocket" ? opts.transport : "auto";
    this.sseURL = opts.sseURL || this.url.replace(/^ws/, "http").replace(/\/ws\/connect(\?|$)/, "/ws/sse$1");
    // _useSSE: this client streams over SSE (forced, or after WebSocket
    // opens kept failing: a proxy that breaks upgrades).
    this._useSSE = this.transport === "sse";
    this._wsFailures = 0;
    this._abort = null;
    this.attempt = 0;
    this.state = "closed";
    this._ws = null;
    this._timer = null;
    this._ping = null;
    this._refreshTimer = null;
    this._tokenExp = 0;
    this._stopped = true;
  }

  // tokenExp reads a JWT's exp (unix seconds; 0 if none or unreadable). The
  // token is not verified here: the server does that.
  function tokenExp(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      var exp = JSON.parse(atob(part)).exp;
      return typeof exp === "number" ? exp : 0;
    } catch (e) {
      return 0;
    }
  }
  OutboxdClient.tokenExp = tokenExp;

  // _scheduleRefresh arms the in-band refresh refreshBefore ms before exp.
  OutboxdClient.prototype._scheduleRefresh = function (exp) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!exp || this.refreshBefore <= 0) return;
    var wait = Math.max(1000, exp * 1000 - Date.now() - this.refreshBefore);
    var self = this;
    this._refreshTimer = setTimeout(function () { self._refresh(); }, Math.min(wait, 2147483647));
  };

  OutboxdClient.prototype._refresh = async function () {
    var ws = this._ws;
    if (!ws || ws.readyState !== 1) return;
    var token;
    try {
      token = await this.getToken();
    } catch (e) {
      return; // the server closes with 4001 at exp; the reconnect asks again
    }
    if (this._ws !== ws || ws.readyState !== 1 || !token) return;
    ws.send(JSON.stringify({ type: "refresh", data: { token: token } }));
  };

  OutboxdClient.prototype._setState = function (state, info) {
    this.state = state;
    try { this.onState(state, info || {}); } catch (e) { console.error(e); }
  };

  // connect starts (or restarts) the connection loop.
  OutboxdClient.prototype.connect = function () {
    this._stopped = false;
    clearTimeout(this._timer);
    this._open();
  };

  // subscribe replaces the topic filter (null: every topic). It is sent at
  // once when connected and kept for every reconnect; the server answers
  // with a "subscribed" frame (onMessage) naming the seq it applies from.
  OutboxdClient.prototype.subscribe = function (topics) {
    this.topics = Array.isArray(topics) ? topics.slice() : null;
    if (this._ws && this._ws.readyState === 1) {
      this._ws.send(JSON.stringify({ type: "subscribe", data: { topics: this.topics } }));
    } else if (this._abort) {
      // SSE is one way: resume the stream with the new filter from the
      // last seq received (nothing is lost, nothing repeated).
      var abort = this._abort;
      this._abort = null;
      abort.abort();
      clearInterval(this._ping);
      this.attempt = Math.max(this.attempt, 1);
      this._retry({ reason: "subscribe", transport: "sse" }, 0);
    }
  };

  // close stops for good (no reconnect).
  OutboxdClient.prototype.close = function (info) {
    this._stopped = true;
    clearTimeout(this._timer);
    clearInterval(this._ping);
    clearTimeout(this._refreshTimer);
    if (this._ws) this._ws.close(1000, "client closed");
    this._ws = null;
    if (this._abort) this._abort.abort();
    this._abort = null;
    info = info || {};
    info.since = this.lastSeq;
    this._setState("closed", info);
  };

  OutboxdClient.prototype._open = async function () {
    var self = this;
    self._setState(self.attempt === 0 ? "connecting" : "reconnecting", { attempt: self.attempt, since: self.lastSeq });
    var token;
    try {
      token = await self.getToken();
    } catch (e) {
      if (self._revoked) return self.close({ code: 4003, reason: "revoked; getToken failed: " + e });
      return self._retry({ reason: "getToken failed: " + e });
    }
    if (self._stopped) return;
    if (self._revoked && !token) return self.close({ code: 4003, reason: "revoked; no new token" });
    self._revoked = false;
    self._tokenExp = tokenExp(token);
    // The token travels as a subprotocol by default: it stays out of URLs,
    // and so out of proxy access logs and browser history.
    var params = [];
    if (self.tokenIn === "query") params.push("token=" + encodeURIComponent(token));
    if (self.lastSeq !== null) {
      params.push("since=" + self.lastSeq);
      if (self.epoch !== null) params.push("epoch=" + encodeURIComponent(self.epoch));
    }
    if (self.topics !== null) params.push("topics=" + self.topics.map(encodeURIComponent).join(","));
    if (self._useSSE) return self._openSSE(token, params);
    params.push("batch=1"); // several events per frame, one per line: fewer frames under load
    var url = self.url + (params.length ? (self.url.indexOf("?") < 0 ? "?" : "&") + params.join("&") : "");
    var ws;
    try {
      ws = self.tokenIn === "query" ? new self.WebSocket(url) : new self.WebSocket(url, ["outboxd.v1", "outboxd.token." + token]);
    } catch (e) {
      self._wsFailed();
      return self._retry({ reason: String(e) });
    }
    self._ws = ws;
    self._welcomed = false;
    ws.onmessage = function (m) {
      var lines = String(m.data).split("\n");
      for (var i = 0; i < lines.length; i++) if (self._ws === ws) self._frame(lines[i]);
    };
    ws.onclose = function (e) {
      if (self._ws !== ws) return;
      clearInterval(self._ping);
      clearTimeout(self._refreshTimer);
      self._ws = null;
      if (!self._welcomed) self._wsFailed();
      self._closed(e.code, e.reason);
    };
  };

  // _wsFailed counts a WebSocket open that failed before its welcome; in
  // "auto" two in a row switch the client to SSE — unless a WebSocket
  // session has worked before: then the failures are an outage (a restart,
  // a network cut), not a proxy that breaks upgrades.
  OutboxdClient.prototype._wsFailed = function () {
    this._wsFailures++;
    if (this.transport === "auto" && !this._wsWorked && this._wsFailures >= 2 && this.fetch) this._useSSE = true;
  };

  // _closed reacts to a session's end, whatever its transport.
  OutboxdClient.prototype._closed = function (code, reason) {
    if (this._stopped) return;
    var info = { code: code, reason: reason, since: this.lastSeq, transport: this._useSSE ? "sse" : "websocket" };
    if (code === 4003) this._revoked = true; // the app changed this user's rights: ask it for a token
    if (code === 4001 || code === 4003 || code === 4008 || code === 1001 || code === 1012) {
      this.attempt = Math.max(this.attempt, 1);
      return this._retry(info, 0); // at once, with since (and a fresh token)
    }
    this._retry(info);
  };

  // _openSSE streams GET /ws/sse with fetch (the token in an Authorization
  // header, not the URL, which EventSource could not do) and parses the
  // events: each one's data is the envelope a WebSocket frame would carry;
  // "event: close" carries the close code.
  OutboxdClient.prototype._openSSE = async function (token, params) {
    var self = this;
    var abort = typeof AbortController === "function" ? new AbortController() : null;
    self._abort = abort;
    var url = self.sseURL + (params.length ? (self.sseURL.indexOf("?") < 0 ? "?" : "&") + params.join("&") : "");
    var resp;
    try {
      resp = await self.fetch(url, { headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" }, signal: abort ? abort.signal : undefined, cache: "no-store" });
    } catch (e) {
      if (self._abort === abort) self._retry({ reason: "sse: " + e, transport: "sse" });
      return;
    }
    if (!resp.ok) {
      return self._retry({ reason: "sse: HTTP " + resp.status, status: resp.status, transport: "sse" });
    }
    var reader = resp.body.getReader();
    var decoder = new TextDecoder();
    var buf = "", ev = { event: "", data: "" }, closed = null;
    try {
      for (;;) {
        var r = await reader.read();
        if (r.done || self._abort !== abort) break;
        buf += decoder.decode(r.value, { stream: true });
        var i;
        while ((i = buf.indexOf("\n")) >= 0) {
          var line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line === "") {
            if (ev.event === "close") {
              try { closed = JSON.parse(ev.data); } catch (e) { closed = { code: 1006, reason: "bad close event" }; }
            } else if (ev.data !== "") {
              self._frame(ev.data);
            }
            ev = { event: "", data: "" };
          } else if (line.indexOf("event: ") === 0) {
            ev.event = line.slice(7);
          } else if (line.indexOf("data: ") === 0) {
            ev.data = line.slice(6);
          }
        }
        if (closed) break;
      }
    } catch (e) {
      // the stream broke: reconnect below
    }
    if (self._abort !== abort) return; // closed by the client, or replaced
    self._abort = null;
    if (abort) abort.abort();
    clearInterval(self._ping);
    self._closed(closed ? closed.code : 1006, closed ? closed.reason : "stream ended");
  };

  OutboxdClient.prototype._retry = function (info, delay) {
    if (this._stopped) return;
    this.attempt++;
    if (delay === undefined) {
      var cap = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this.attempt - 1));
      delay = Math.round(cap / 2 + Math.random() * cap / 2); // jitter
    }
    info = info || {};
    info.attempt = this.attempt;
    info.delay = delay;
    info.since = this.lastSeq;
    this._setState("reconnecting", info);
    var self = this;
    this._timer = setTimeout(function () { self._open(); }, delay);
  };

  OutboxdClient.prototype._frame = function (raw) {
    var msg;
    try { msg = JSON.parse(raw); } catch (e) { return; }
    if (typeof msg.seq === "number") {
      if (this.lastSeq !== null && msg.seq <= this.lastSeq) return; // duplicate
      this.lastSeq = msg.seq;
      try { this.onEvent(msg); } catch (e) { console.error(e); }
      return;
    }
    if (msg.type === "welcome") {
      this.attempt = 0;
      this._welcomed = true;
      if (!this._useSSE) {
        this._wsFailures = 0;
        this._wsWorked = true;
      }
      // In another history the old seq means nothing: live from the head,
      // and resync_required (reason "epoch") follows.
      if (this.lastSeq === null || (this.epoch !== null && msg.data.epoch !== this.epoch)) this.lastSeq = msg.data.head_seq;
      this.epoch = msg.data.epoch || null;
      var self = this;
      clearInterval(this._ping);
      if (!this._useSSE) {
        this._ping = setInterval(function () {
          if (self._ws && self._ws.readyState === 1) self._ws.send('{"type":"ping"}');
        }, this.pingInterval);
      }
      this._setState("open", { since: this.lastSeq, epoch: this.epoch, user: msg.data.user_id, roles: msg.data.roles,
        transport: this._useSSE ? "sse" : "websocket" });
      // SSE is one way: no in-band refresh, the server's 4001 at exp makes
      // the client reconnect with a new token.
      if (!this._useSSE) this._scheduleRefresh(this._tokenExp);
    } else if (msg.type === "refreshed") {
      this._scheduleRefresh(msg.data.exp);
    } else if (msg.type === "resync_required") {
      try { this.onResync(msg.data.oldest_seq, msg.data.reason); } catch (e) { console.error(e); }
    }
    try { this.onMessage(msg); } catch (e) { console.error(e); }
  };

  root.OutboxdClient = OutboxdClient;
  if (typeof module !== "undefined" && module.exports) module.exports = OutboxdClient;
})(typeof globalThis !== "undefined" ? globalThis : this);
