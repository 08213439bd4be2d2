// Unit tests of outboxd-client.js's in-band refresh, with a fake WebSocket
// (node's test runner: node --test examples/browser/).
"use strict";
const test = require("node:test");
const assert = require("node:assert");
const OutboxdClient = require("./outboxd-client.js");

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
