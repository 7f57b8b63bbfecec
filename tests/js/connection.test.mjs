// The WebSocket side of the page (static/js/connection.js), with a fake clock, socket and
// fetch: reconnect waits (full jitter; 0-2 s after 1001), auth closes, silence, pings.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  BACKOFF_CAP_MS, PING_INTERVAL_MS, PresenceConnection, RESTART_WINDOW_MS, SILENCE_LIMIT_MS,
  STABLE_AFTER_MS, backoffCeiling, parseFrame, reconnectDelay, socketUrl,
} from '../../static/js/connection.js';

/** Timers on a virtual clock; ``advance`` runs what falls due, in order. */
class FakeClock {
  constructor() {
    this.now = 0;
    this.timers = new Map();
    this.nextId = 1;
  }

  set(fn, ms, repeat) {
    const id = this.nextId++;
    this.timers.set(id, { fn, at: this.now + Math.max(0, ms), every: repeat ? ms : null });
    return id;
  }

  clear(id) {
    this.timers.delete(id);
  }

  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let due = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (due === null || t.at < due[1].at)) {
          due = [id, t];
        }
      }
      if (due === null) {
        break;
      }
      const [id, t] = due;
      this.now = t.at;
      if (t.every === null) {
        this.timers.delete(id);
      } else {
        t.at += t.every;
      }
      t.fn();
      await flush();
    }
    this.now = end;
    await flush();
  }
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

function harness({ random = () => 0.5, apiStatus = 200 } = {}) {
  const clock = new FakeClock();
  const sockets = [];
  const fetches = [];
  const events = { status: [], stale: [], announce: [], snapshots: [], presence: [], auth: 0 };
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.openedAt = clock.now;
      sockets.push(this);
    }

    open() {
      this.readyState = 1;
      this.onopen && this.onopen();
    }

    receive(msg) {
      this.onmessage && this.onmessage({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) });
    }

    serverClose(code) {
      this.readyState = 3;
      this.onclose && this.onclose({ code });
    }

    send(text) {
      this.sent.push(JSON.parse(text));
    }

    close(code) {
      this.closedWith = code;
      this.readyState = 3;
    }
  }
  const env = {
    WebSocket: FakeSocket,
    fetch: (url) => {
      fetches.push({ url, at: clock.now });
      const status = typeof apiStatus === 'function' ? apiStatus() : apiStatus;
      return status === 'down' ? Promise.reject(new Error('refused')) : Promise.resolve({ status });
    },
    setTimeout: (fn, ms) => clock.set(fn, ms, false),
    clearTimeout: (id) => clock.clear(id),
    setInterval: (fn, ms) => clock.set(fn, ms, true),
    clearInterval: (id) => clock.clear(id),
    now: () => clock.now,
    random,
    isOffline: () => false,
    log: () => {},
  };
  const conn = new PresenceConnection('ws://h/ws', {
    snapshot: (msg) => events.snapshots.push(msg),
    presence: (msg, synced) => events.presence.push([msg.username, synced]),
    status: (state, text) => events.status.push([state, text]),
    stale: (value) => events.stale.push(value),
    announce: (text) => events.announce.push(text),
    authLost: () => { events.auth += 1; },
  }, env);
  const live = () => {
    const ws = sockets[sockets.length - 1];
    ws.open();
    ws.receive({ type: 'snapshot', me: 'alice', users: [] });
    return ws;
  };
  return { clock, sockets, fetches, events, conn, live, last: () => sockets[sockets.length - 1] };
}

test('backoff: full jitter under a doubling ceiling, capped', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 10].map(backoffCeiling),
    [500, 1000, 2000, 4000, 8000, 15000, BACKOFF_CAP_MS]);
  assert.equal(reconnectDelay(0, 1006, () => 0.999), 0.999 * 500);
  assert.equal(reconnectDelay(3, 1006, () => 0), 0);
  assert.equal(reconnectDelay(3, null, () => 0.5), 2000);
});

test('after 1001 the first wait spreads over 0-2 s; later ones keep the backoff', () => {
  assert.equal(RESTART_WINDOW_MS, 2000);
  assert.equal(reconnectDelay(0, 1001, () => 0), 0);
  assert.equal(reconnectDelay(0, 1001, () => 0.5), 1000);
  assert.equal(reconnectDelay(0, 1001, () => 0.999), 1998);
  assert.equal(reconnectDelay(4, 1001, () => 0.5), 4000);  // never below the backoff
  assert.equal(reconnectDelay(1, null, () => 0.5), 500);
});

test('a restart: reconnect after the jittered wait, then the backoff while down', async () => {
  let api = 'down';
  const h = harness({ random: () => 0.9, apiStatus: () => api });
  h.conn.start();
  const first = h.live();
  assert.deepEqual(h.events.status.at(-1), ['live', 'Live']);
  await h.clock.advance(20_000);  // stable: backoff reset
  const closedAt = h.clock.now;
  first.serverClose(1001);
  assert.deepEqual(h.events.stale, [false, true]);
  assert.deepEqual(h.events.announce, ['Connection lost, reconnecting']);
  assert.equal(h.events.status.at(-1)[0], 'reconnecting');
  await h.clock.advance(10_000);
  const waits = h.fetches.map((f, i) => f.at - (i ? h.fetches[i - 1].at : closedAt));
  assert.deepEqual(waits.slice(0, 4), [1800, 900, 1800, 3600]);  // 0.9 x 2000, 1000, ...
  api = 200;
  await h.clock.advance(20_000);
  assert.equal(h.sockets.length, 2);
  h.live();
  assert.deepEqual(h.events.stale.at(-1), false);
  assert.ok(h.events.announce.includes('Reconnected'));
});

test('other closes keep the plain backoff (0-0.5 s first)', async () => {
  const h = harness({ random: () => 0.9 });
  h.conn.start();
  h.live();
  await h.clock.advance(STABLE_AFTER_MS + 1);
  h.last().serverClose(1006);
  await h.clock.advance(449);
  assert.equal(h.fetches.length, 0);
  await h.clock.advance(2);
  assert.equal(h.fetches.length, 1);
  assert.equal(h.sockets.length, 2);
});

test('the backoff is reset only after a connection stayed up', async () => {
  const h = harness({ random: () => 1 - 1e-9 });
  h.conn.start();
  h.last().serverClose(1006);           // attempt 0 -> up to 500 ms
  await h.clock.advance(600);
  h.last().serverClose(1006);           // attempt 1 -> up to 1 s
  assert.ok(Math.abs(h.conn.lastDelay - 1000) < 1e-3);
  await h.clock.advance(1100);
  h.live();
  await h.clock.advance(STABLE_AFTER_MS - 1);
  assert.equal(h.conn.attempt, 2);
  await h.clock.advance(2);
  assert.equal(h.conn.attempt, 0);
});

test('4001 and 4401 go to /login at once; no reconnect', async () => {
  for (const code of [4001, 4401]) {
    const h = harness();
    h.conn.start();
    h.live();
    h.last().serverClose(code);
    await h.clock.advance(60_000);
    assert.equal(h.events.auth, 1);
    assert.equal(h.sockets.length, 1);
    assert.deepEqual(h.events.status.at(-1), ['offline', 'Signed out']);
  }
});

test('a reconnect that finds the session gone (401) goes to /login', async () => {
  const h = harness({ apiStatus: 401 });
  h.conn.start();
  h.live();
  h.last().serverClose(1006);
  await h.clock.advance(1000);
  assert.equal(h.events.auth, 1);
  assert.equal(h.sockets.length, 1);
});

test('leaving the page (logout form) never reconnects or redirects', async () => {
  const h = harness();
  h.conn.start();
  h.live();
  h.conn.leave();
  h.last().serverClose(4001);
  await h.clock.advance(60_000);
  assert.equal(h.events.auth, 0);
  assert.equal(h.sockets.length, 1);
});

test('events before the snapshot are not announced; unknown types are ignored', () => {
  const h = harness();
  h.conn.start();
  const ws = h.last();
  ws.open();
  ws.receive({ type: 'presence', username: 'early' });
  ws.receive({ type: 'snapshot', me: 'alice', users: [] });
  ws.receive({ type: 'presence', username: 'bob' });
  ws.receive({ type: 'account_deleted', username: 'bob' });
  ws.receive('not json');
  ws.receive('[1, 2]');
  ws.receive({ type: 'pong' });
  assert.deepEqual(h.events.presence, [['early', false], ['bob', true]]);
  assert.equal(h.events.snapshots.length, 1);
});

test('pings every 25 s; a silent connection is dropped and replaced', async () => {
  const h = harness({ random: () => 0 });
  h.conn.start();
  const ws = h.live();
  await h.clock.advance(PING_INTERVAL_MS);
  assert.deepEqual(ws.sent, [{ type: 'ping' }]);
  await h.clock.advance(SILENCE_LIMIT_MS);
  assert.equal(ws.closedWith, 4000);
  await h.clock.advance(10);
  assert.equal(h.sockets.length, 2);
});

test('frames and URLs', () => {
  assert.deepEqual(parseFrame('{"type":"pong"}'), { type: 'pong' });
  assert.equal(parseFrame('nope'), null);
  assert.equal(parseFrame('null'), null);
  assert.equal(parseFrame('"text"'), null);
  assert.equal(socketUrl({ protocol: 'https:', host: 'example.org' }), 'wss://example.org/ws');
  assert.equal(socketUrl({ protocol: 'http:', host: '127.0.0.1:8888' }), 'ws://127.0.0.1:8888/ws');
});

test('a removed message reaches the page\'s handler; pages without one ignore it', () => {
  const h = harness();
  const removed = [];
  h.conn.start();
  const ws = h.live();
  ws.receive({ type: 'removed', username: 'bob' });  // this harness has no handler: ignored
  h.conn.h.removed = (msg, synced) => removed.push([msg.username, synced]);
  ws.receive({ type: 'removed', username: 'carol' });
  assert.deepEqual(removed, [['carol', true]]);
  assert.equal(h.sockets.length, 1);  // no reconnect, no error
});
