// Unit tests of the client with a fake WebSocket (node's test runner:
// npm test).
import test from "node:test";
import assert from "node:assert";
import { OutboxdClient } from "../src/index.js";

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims) + ".sig";
}

// FakeWS opens at once; sent frames are pushed to sent and announced.
function fakeSocket() {
  const sockets = [];
  class FakeWS {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 1;
      this.sent = [];
      this.waiters = [];
      sockets.push(this);
    }
    send(s) {
      this.sent.push(JSON.parse(s));
      this.waiters.splice(0).forEach((w) => w());
    }
    close() {
      this.readyState = 3;
    }
    receive(msg) {
      this.onmessage({ data: JSON.stringify(msg) });
    }
    nextSent(type) {
      return new Promise((resolve) => {
        const check = () => {
          const m = this.sent.find((x) => x.type === type);
          if (m) resolve(m);
          else this.waiters.push(check);
        };
        check();
      });
    }
  }
  return { FakeWS, sockets };
}

const welcome = { type: "welcome", data: { user_id: "op1", roles: ["LEVEL_1"], head_seq: 0, heartbeat_interval: 30, epoch: "e1" } };

test("refreshes in band before the token expires, and keeps the session", async () => {
  const { FakeWS, sockets } = fakeSocket();
  const now = Math.floor(Date.now() / 1000);
  const tokens = [jwt({ sub: "op1", exp: now + 2 }), jwt({ sub: "op1", exp: now + 3600 })];
  let calls = 0;
  const states = [];
  const client = new OutboxdClient({
    url: "ws://test/ws/connect",
    WebSocket: FakeWS,
    getToken: async () => tokens[Math.min(calls++, 1)],
    refreshBefore: 1500,
    onState: (s) => states.push(s),
  });
  client.connect();
  await new Promise((r) => setImmediate(r));
  assert.strictEqual(sockets.length, 1);
  sockets[0].receive(welcome);
  const refresh = await sockets[0].nextSent("refresh");
  assert.strictEqual(refresh.data.token, tokens[1]);
  sockets[0].receive({ type: "refreshed", data: { roles: ["LEVEL_1"], exp: now + 3600, seq: 0 } });
  sockets[0].receive({ type: "task_event", seq: 1, id: 1, timestamp: "", data: {} });
  assert.strictEqual(sockets.length, 1, "no reconnect");
  assert.deepStrictEqual(states, ["connecting", "open"]);
  client.close();
});

test("tokenExp reads exp and tolerates anything else", () => {
  assert.strictEqual(OutboxdClient.tokenExp(jwt({ exp: 42 })), 42);
  assert.strictEqual(OutboxdClient.tokenExp(jwt({ sub: "x" })), 0);
  assert.strictEqual(OutboxdClient.tokenExp("not a token"), 0);
});

test("refreshBefore 0 never refreshes", async () => {
  const { FakeWS, sockets } = fakeSocket();
  const client = new OutboxdClient({
    url: "ws://test/ws/connect",
    WebSocket: FakeWS,
    getToken: async () => jwt({ sub: "op1", exp: Math.floor(Date.now() / 1000) + 1 }),
    refreshBefore: 0,
  });
  client.connect();
  await new Promise((r) => setImmediate(r));
  sockets[0].receive(welcome);
  assert.strictEqual(client._refreshTimer, null);
  client.close();
});

test("falls back to SSE after two WebSocket opens fail, and reads its events", async () => {
  let wsOpens = 0;
  class BlockedWS {
    constructor() {
      wsOpens++;
      this.readyState = 0;
      setImmediate(() => this.onclose({ code: 1006, reason: "" }));
    }
    close() {}
  }
  const requests = [];
  const enc = new TextEncoder();
  const body = (text) => new ReadableStream({ start(c) { c.enqueue(enc.encode(text)); c.close(); } });
  let streams = 0;
  const fakeFetch = async (url, init) => {
    requests.push({ url, init });
    streams++;
    if (streams === 1) {
      return { ok: true, status: 200, body: body(
        'event: welcome\nid: 0\ndata: {"type":"welcome","data":{"user_id":"op1","roles":[],"head_seq":0,"heartbeat_interval":30,"epoch":"e1"}}\n\n' +
        ': ping\n\n' +
        'event: task_event\nid: 1\ndata: {"type":"task_event","seq":1,"id":1,"timestamp":"","data":{"n":1}}\n\n' +
        'event: close\ndata: {"code":4001,"reason":"token expired"}\n\n') };
    }
    return new Promise(() => {}); // the second stream stays open
  };
  const events = [];
  const states = [];
  const client = new OutboxdClient({
    url: "ws://test/ws/connect", WebSocket: BlockedWS, fetch: fakeFetch, minDelay: 1, maxDelay: 2,
    getToken: async () => "tok", onEvent: (e) => events.push(e.seq), onState: (s, info) => states.push([s, info && info.transport]),
  });
  client.connect();
  for (let i = 0; i < 200 && requests.length < 2; i++) await new Promise((r) => setTimeout(r, 5));
  client.close();
  assert.strictEqual(wsOpens, 2, "two WebSocket attempts before the fallback");
  assert.ok(requests[0].url.startsWith("http://test/ws/sse"), requests[0].url);
  assert.strictEqual(requests[0].init.headers.Authorization, "Bearer tok");
  assert.deepStrictEqual(events, [1]);
  assert.ok(requests[1].url.includes("since=1"), "the reconnect after 4001 resumes: " + requests[1].url);
  assert.ok(states.some(([s, t]) => s === "open" && t === "sse"));
});

test("transport: sse from the start", async () => {
  const requests = [];
  const client = new OutboxdClient({
    url: "wss://app.example/ws/connect", transport: "sse", WebSocket: class { constructor() { throw new Error("no WebSocket"); } },
    fetch: async (url) => { requests.push(url); return new Promise(() => {}); }, getToken: async () => "tok",
  });
  client.connect();
  for (let i = 0; i < 100 && requests.length < 1; i++) await new Promise((r) => setTimeout(r, 5));
  client.close();
  assert.ok(requests[0].startsWith("https://app.example/ws/sse"), requests[0]);
});

test("an outage after a working WebSocket does not switch to SSE", async () => {
  const { FakeWS, sockets } = fakeSocket();
  let fetched = 0;
  const client = new OutboxdClient({
    url: "ws://test/ws/connect", WebSocket: FakeWS, fetch: async () => { fetched++; return new Promise(() => {}); },
    minDelay: 1, maxDelay: 2, getToken: async () => "tok",
  });
  client.connect();
  await new Promise((r) => setImmediate(r));
  sockets[0].receive(welcome);
  for (let i = 0; i < 3; i++) {
    const ws = sockets[sockets.length - 1];
    ws.onclose({ code: 1006, reason: "" }); // the server went away
    for (let k = 0; k < 50 && sockets.length < i + 2; k++) await new Promise((r) => setTimeout(r, 2));
  }
  client.close();
  assert.strictEqual(fetched, 0);
  assert.ok(sockets.length >= 3);
});

test("subscribe over SSE resumes the stream with the new filter", async () => {
  const urls = [];
  const client = new OutboxdClient({
    url: "ws://test/ws/connect", transport: "sse", minDelay: 1, maxDelay: 2,
    fetch: async (url) => { urls.push(url); return new Promise(() => {}); }, getToken: async () => "tok", since: 5, epoch: "e1",
  });
  client.connect();
  for (let i = 0; i < 100 && urls.length < 1; i++) await new Promise((r) => setTimeout(r, 2));
  client.subscribe(["task_event"]);
  for (let i = 0; i < 100 && urls.length < 2; i++) await new Promise((r) => setTimeout(r, 2));
  client.close();
  assert.ok(urls[1].includes("topics=task_event") && urls[1].includes("since=5"), urls[1]);
});
