/* The presence WebSocket: connect, reconnect with backoff and full jitter, ping/silence.
 *
 * No DOM and no globals at import time: the browser's WebSocket, fetch, timers, clock and
 * Math.random are looked up when a connection is made, or passed in (`env`), so
 * `node --test tests/js/` drives it with fakes.
 */

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 15000;
export const RESTART_WINDOW_MS = 2000;  // first reconnect after 1001 lands anywhere in it
export const STABLE_AFTER_MS = 10000;   // a connection live this long resets the backoff
export const PING_INTERVAL_MS = 25000;  // application ping, to notice a dead connection
export const SILENCE_LIMIT_MS = 60000;  // no frame at all for this long: reconnect
export const GOING_AWAY = 1001;
export const AUTH_CLOSE_CODES = [4001, 4401];

/** The backoff ceiling for the n-th consecutive failed attempt (0-based). */
export function backoffCeiling(attempt) {
  return Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempt));
}

/**
 * How long to wait before reconnect attempt ``attempt`` (0-based count of consecutive
 * failures). Full jitter: uniform in [0, ceiling). After a 1001 close (a restart or a
 * deploy: every client of the process got it at the same moment) the first wait spreads
 * over at least RESTART_WINDOW_MS so the clients do not come back as one flood; the waits
 * after that keep the usual backoff.
 */
export function reconnectDelay(attempt, closeCode, random) {
  let ceiling = backoffCeiling(attempt);
  if (closeCode === GOING_AWAY) {
    ceiling = Math.max(ceiling, RESTART_WINDOW_MS);
  }
  return random() * ceiling;
}

export function socketUrl(location) {
  return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/ws';
}

/** The parsed message, or null for a frame that is not a JSON object. */
export function parseFrame(data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (e) {
    return null;
  }
  return msg && typeof msg === 'object' && !Array.isArray(msg) ? msg : null;
}

function browserEnv() {
  const g = globalThis;
  return {
    WebSocket: g.WebSocket,
    fetch: (...args) => g.fetch(...args),
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (id) => g.clearTimeout(id),
    setInterval: (fn, ms) => g.setInterval(fn, ms),
    clearInterval: (id) => g.clearInterval(id),
    now: () => Date.now(),
    random: () => Math.random(),
    isOffline: () => typeof g.navigator !== 'undefined' && g.navigator.onLine === false,
    log: (...args) => console.debug('presence:', ...args),
  };
}

/**
 * One logical connection that keeps itself open. ``handlers``:
 *   snapshot(msg), presence(msg, synced): messages (unknown types are ignored);
 *   status(state, text): "connecting" | "live" | "reconnecting" | "offline";
 *   stale(isStale): the list may be out of date (true) or is true again (false);
 *   announce(text); authLost(): the session is gone, go to /login.
 */
export class PresenceConnection {
  constructor(url, handlers, env) {
    this.url = url;
    this.h = handlers;
    this.env = Object.assign(browserEnv(), env || {});
    this.socket = null;
    this.synced = false;       // snapshot received on the current socket
    this.attempt = 0;          // consecutive failed connections
    this.everLive = false;
    this.leaving = false;      // page is being left (logout, navigation)
    this.redirecting = false;
    this.reconnectTimer = null;
    this.countdownTimer = null;
    this.stableTimer = null;
    this.pingTimer = null;
    this.lastFrameAt = 0;
    this.lastDelay = null;     // the most recent reconnect wait, in ms
  }

  get waiting() {
    return this.reconnectTimer !== null;
  }

  start() {
    this.h.status('connecting', 'Connecting…');
    this.connect();
  }

  connect() {
    if (this.leaving || this.redirecting) {
      return;
    }
    this.synced = false;
    let ws;
    try {
      ws = new this.env.WebSocket(this.url);
    } catch (err) {
      this.env.log('cannot open socket', err);
      this.scheduleReconnect(null);
      return;
    }
    this.socket = ws;
    ws.onopen = () => {
      this.lastFrameAt = this.env.now();
      this.env.clearTimeout(this.stableTimer);
      this.stableTimer = this.env.setTimeout(() => { this.attempt = 0; }, STABLE_AFTER_MS);
      this.env.clearInterval(this.pingTimer);
      this.pingTimer = this.env.setInterval(() => this.heartbeat(), PING_INTERVAL_MS);
    };
    ws.onmessage = (event) => {
      this.lastFrameAt = this.env.now();
      this.handleFrame(event.data);
    };
    ws.onerror = () => {
      this.env.log('socket error');  // a close event follows
    };
    ws.onclose = (event) => {
      this.gone(ws, event.code);
    };
  }

  detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  clearTimers() {
    const env = this.env;
    env.clearTimeout(this.reconnectTimer);
    env.clearInterval(this.countdownTimer);
    env.clearTimeout(this.stableTimer);
    env.clearInterval(this.pingTimer);
    this.reconnectTimer = this.countdownTimer = this.stableTimer = this.pingTimer = null;
  }

  heartbeat() {
    const ws = this.socket;
    if (!ws || ws.readyState !== 1 /* OPEN */) {
      return;
    }
    if (this.env.now() - this.lastFrameAt > SILENCE_LIMIT_MS) {
      this.env.log('connection silent, reconnecting');
      this.detach(ws);
      try { ws.close(4000, 'timeout'); } catch (e) { /* already closing */ }
      this.gone(ws, 1006);
      return;
    }
    try {
      ws.send(JSON.stringify({ type: 'ping' }));
    } catch (e) {
      this.env.log('ping failed', e);
    }
  }

  gone(ws, code) {
    if (ws !== this.socket) {
      return;
    }
    this.detach(ws);
    this.socket = null;
    this.synced = false;
    this.env.clearTimeout(this.stableTimer);
    this.env.clearInterval(this.pingTimer);
    this.stableTimer = this.pingTimer = null;
    if (this.leaving || this.redirecting) {
      return;
    }
    if (AUTH_CLOSE_CODES.indexOf(code) !== -1) {
      this.authLost();
      return;
    }
    this.h.stale(true);
    if (this.everLive) {
      this.everLive = false;
      this.h.announce('Connection lost, reconnecting');
    }
    this.scheduleReconnect(code);
  }

  authLost() {
    if (this.redirecting) {
      return;
    }
    this.redirecting = true;
    this.clearTimers();
    this.h.status('offline', 'Signed out');
    this.h.authLost();
  }

  scheduleReconnect(closeCode) {
    if (this.leaving || this.redirecting) {
      return;
    }
    const env = this.env;
    env.clearTimeout(this.reconnectTimer);
    env.clearInterval(this.countdownTimer);
    const delay = reconnectDelay(this.attempt, closeCode, env.random);
    this.lastDelay = delay;
    this.attempt += 1;
    const due = env.now() + delay;
    const showCountdown = () => {
      const seconds = Math.max(1, Math.ceil((due - env.now()) / 1000));
      if (env.isOffline()) {
        this.h.status('offline', 'Offline · retrying in ' + seconds + ' s…');
      } else {
        this.h.status('reconnecting', 'Reconnecting in ' + seconds + ' s…');
      }
    };
    showCountdown();
    this.countdownTimer = env.setInterval(showCountdown, 250);
    this.reconnectTimer = env.setTimeout(() => this.attemptReconnect(), delay);
  }

  /** Asks /api/session first (a few bytes): a 401 means the session is gone (to /login,
   * no retry loop). */
  attemptReconnect() {
    const env = this.env;
    env.clearTimeout(this.reconnectTimer);
    env.clearInterval(this.countdownTimer);
    this.reconnectTimer = this.countdownTimer = null;
    if (this.leaving || this.redirecting || this.socket) {
      return;
    }
    this.h.status('reconnecting', 'Reconnecting…');
    const probe = Promise.resolve().then(
      () => env.fetch('/api/session', { credentials: 'same-origin', cache: 'no-store' }));
    probe.then((response) => {
      if (response.status === 401) {
        this.authLost();
        return;
      }
      this.connect();
    }, (err) => {
      env.log('server unreachable', err);
      this.scheduleReconnect(null);
    });
  }

  handleFrame(data) {
    const msg = parseFrame(data);
    if (msg === null) {
      this.env.log('non-JSON frame ignored');
      return;
    }
    switch (msg.type) {
      case 'snapshot': {
        const wasLive = this.everLive;
        this.h.snapshot(msg);
        this.synced = true;
        this.h.stale(false);
        this.h.status('live', 'Live');
        if (!wasLive && this.attempt > 0) {
          this.h.announce('Reconnected');
        }
        this.everLive = true;
        break;
      }
      case 'presence':
        this.h.presence(msg, this.synced);
        break;
      case 'removed':  // an account deleted by an operator
        if (this.h.removed) {
          this.h.removed(msg, this.synced);
        }
        break;
      case 'pong':
        break;
      case 'error':
        this.env.log('server error', msg.error);
        break;
      default:
        this.env.log('unknown message', msg.type);  // new types are for newer pages
    }
  }

  /** The page is being left (logout form, navigation): no reconnects, no redirects. */
  leave() {
    this.leaving = true;
  }

  /** Going into the back/forward cache: close cleanly, reconnect on return. */
  suspend() {
    this.leaving = true;
    const ws = this.socket;
    if (!ws) {
      return;
    }
    this.detach(ws);
    this.socket = null;
    this.clearTimers();
    try { ws.close(1000, 'page hidden'); } catch (e) { /* ignore */ }
  }

  resume() {
    this.leaving = false;
    if (this.socket) {
      return;
    }
    this.clearTimers();
    this.attempt = 0;
    this.everLive = false;
    this.h.stale(true);
    this.h.status('connecting', 'Connecting…');
    this.attemptReconnect();
  }

  /** The network is back: don't wait out the backoff. */
  networkBack() {
    if (!this.socket && this.reconnectTimer !== null) {
      this.attemptReconnect();
    }
  }
}
