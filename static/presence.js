/* Presence: live "who's online" list.
 *
 * The server renders the list; this script keeps it current over a WebSocket
 * (see CONTRACT.md, "WebSocket messages"). User data only ever reaches the DOM
 * through textContent / setAttribute, never through innerHTML.
 */
(function () {
  'use strict';

  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  const STABLE_AFTER_MS = 10000;      // a connection live this long resets the backoff
  const RELATIVE_REFRESH_MS = 30000;  // "last seen" texts are recomputed this often
  const PING_INTERVAL_MS = 25000;     // application ping, to notice a dead connection
  const SILENCE_LIMIT_MS = 60000;     // no frame at all for this long: reconnect
  const ANNOUNCE_DELAY_MS = 150;      // batch announcements that arrive together
  const ANNOUNCE_MAX = 3;
  const AUTH_CLOSE_CODES = [4001, 4401];

  const list = document.getElementById('user-list');
  if (!list) {
    return;
  }
  const meHolder = document.querySelector('[data-me]');
  const countEl = document.getElementById('online-count');
  const connEl = document.getElementById('conn-status');
  const announcer = document.getElementById('announcer');
  const emptyEl = document.getElementById('empty-state');

  let me = meHolder ? meHolder.getAttribute('data-me') || '' : '';

  /** username -> {online: boolean, version: number|null, last_seen: string|null} */
  const state = new Map();
  /** username -> <li> */
  const rows = new Map();

  // ---------------------------------------------------------------- helpers

  function parseVersion(value) {
    if (typeof value === 'number') {
      return Number.isFinite(value) ? value : null;
    }
    if (typeof value === 'string' && value.trim() !== '') {
      const n = Number(value);
      return Number.isFinite(n) ? n : null;
    }
    return null;
  }

  function normalize(raw) {
    return {
      online: raw.online === true || raw.online === 'true',
      version: parseVersion(raw.version),
      last_seen: (typeof raw.last_seen === 'string' && raw.last_seen !== '') ? raw.last_seen : null,
    };
  }

  /** A stale event (version not greater than the known one) is never applied. */
  function isNewer(incoming, known) {
    if (incoming === null || known === null) {
      return true;  // nothing to compare with: the event is the best we know
    }
    return incoming > known;
  }

  function parseIso(text) {
    if (!text) {
      return null;
    }
    let t = String(text).trim().replace(' ', 'T');
    t = t.replace(/(\.\d{3})\d+/, '$1');             // micro- to milliseconds
    t = t.replace(/([+-]\d{2})(\d{2})$/, '$1:$2');    // +0000 -> +00:00
    if (!/(Z|[+-]\d{2}:\d{2})$/i.test(t)) {
      t += 'Z';                                       // the contract says UTC
    }
    const d = new Date(t);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function relativeTime(date, now) {
    const seconds = (now - date.getTime()) / 1000;
    if (seconds < 60) {
      return 'just now';
    }
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) {
      return minutes + ' min ago';
    }
    const hours = Math.floor(minutes / 60);
    if (hours < 24) {
      return hours + ' h ago';
    }
    const days = Math.floor(hours / 24);
    if (days < 7) {
      return days + ' d ago';
    }
    try {
      return date.toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
    } catch (e) {
      return date.toDateString();
    }
  }

  function absoluteTime(date) {
    try {
      return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
    } catch (e) {
      return date.toLocaleString();
    }
  }

  function fillTime(timeEl, now) {
    const iso = timeEl.getAttribute('datetime');
    const date = parseIso(iso);
    if (date) {
      timeEl.textContent = relativeTime(date, now);
      timeEl.title = absoluteTime(date);
    } else {
      timeEl.textContent = iso || '';
      timeEl.removeAttribute('title');
    }
  }

  /**
   * The server's order (presence_app/presence.py: ``(name.lower(), name)``): case-folded
   * names in code-unit order, ties broken by the exact name. Not localeCompare: the list
   * must not reshuffle when the first live event re-sorts the server-rendered rows.
   * (Usernames are ASCII, so JS toLowerCase equals Python's str.lower here.)
   */
  function compareNames(a, b) {
    const la = a.toLowerCase();
    const lb = b.toLowerCase();
    if (la !== lb) {
      return la < lb ? -1 : 1;
    }
    return a < b ? -1 : (a > b ? 1 : 0);
  }

  function compareUsers(a, b) {
    const ua = state.get(a);
    const ub = state.get(b);
    if (ua.online !== ub.online) {
      return ua.online ? -1 : 1;
    }
    return compareNames(a, b);
  }

  function span(className, text) {
    const el = document.createElement('span');
    el.className = className;
    if (text !== undefined) {
      el.textContent = text;
    }
    return el;
  }

  // -------------------------------------------------------------- rendering

  /** (Re)builds one row; same markup as templates/users.html. */
  function renderRow(username) {
    const user = state.get(username);
    let li = rows.get(username);
    if (!li) {
      li = document.createElement('li');
      rows.set(username, li);
    }
    li.className = 'user ' + (user.online ? 'is-online' : 'is-offline');
    li.setAttribute('data-username', username);
    li.setAttribute('data-online', user.online ? 'true' : 'false');
    li.setAttribute('data-version', user.version === null ? '' : String(user.version));
    li.setAttribute('data-last-seen', user.last_seen || '');

    while (li.firstChild) {
      li.removeChild(li.firstChild);
    }
    const dot = span('dot');
    dot.setAttribute('aria-hidden', 'true');
    li.appendChild(dot);
    li.appendChild(document.createTextNode(' '));
    const who = span('who');
    who.appendChild(span('name', username));
    if (username === me) {
      who.appendChild(document.createTextNode(' '));
      who.appendChild(span('you', '(you)'));
    }
    li.appendChild(who);
    li.appendChild(document.createTextNode(' '));
    const stateEl = span('state');
    stateEl.appendChild(span('status', user.online ? 'Online' : 'Offline'));
    if (!user.online && user.last_seen) {
      const seen = span('seen', ' · last seen ');
      const time = document.createElement('time');
      time.setAttribute('datetime', user.last_seen);
      fillTime(time, Date.now());
      seen.appendChild(time);
      stateEl.appendChild(seen);
    }
    li.appendChild(stateEl);
    return li;
  }

  /** Puts the rows in order (online first, then by name), moving as few as possible. */
  function reorder() {
    const names = Array.from(state.keys()).sort(compareUsers);
    let ref = list.firstElementChild;
    for (const name of names) {
      const li = rows.get(name);
      if (li === ref) {
        ref = ref.nextElementSibling;
      } else {
        list.insertBefore(li, ref);
      }
    }
    // Anything left after the sorted rows is not part of the state.
    while (ref) {
      const next = ref.nextElementSibling;
      list.removeChild(ref);
      ref = next;
    }
  }

  function updateSummary() {
    let online = 0;
    for (const user of state.values()) {
      if (user.online) {
        online += 1;
      }
    }
    if (countEl) {
      countEl.textContent = String(online);
    }
    if (emptyEl) {
      emptyEl.hidden = state.size > 0;
    }
  }

  function refreshTimes() {
    const now = Date.now();
    const times = list.querySelectorAll('time[datetime]');
    for (let i = 0; i < times.length; i += 1) {
      fillTime(times[i], now);
    }
  }

  // ----------------------------------------------------------- announcements

  let pendingAnnouncements = [];
  let announceTimer = null;

  function announce(text) {
    if (!announcer) {
      return;
    }
    pendingAnnouncements.push(text);
    if (announceTimer === null) {
      announceTimer = setTimeout(flushAnnouncements, ANNOUNCE_DELAY_MS);
    }
  }

  function flushAnnouncements() {
    announceTimer = null;
    const messages = pendingAnnouncements;
    pendingAnnouncements = [];
    if (messages.length === 0) {
      return;
    }
    let text = messages.slice(0, ANNOUNCE_MAX).join('. ');
    if (messages.length > ANNOUNCE_MAX) {
      const more = messages.length - ANNOUNCE_MAX;
      text += '. And ' + more + ' more ' + (more === 1 ? 'change' : 'changes');
    }
    if (announcer.textContent === text) {
      // Same words again: clear first so screen readers announce it anew.
      announcer.textContent = '';
      setTimeout(function () { announcer.textContent = text; }, 50);
    } else {
      announcer.textContent = text;
    }
  }

  // ------------------------------------------------------------------ state

  function readServerRows() {
    const items = list.querySelectorAll('li[data-username]');
    for (let i = 0; i < items.length; i += 1) {
      const li = items[i];
      const username = li.getAttribute('data-username');
      if (!username || state.has(username)) {
        continue;
      }
      state.set(username, normalize({
        online: li.getAttribute('data-online'),
        version: li.getAttribute('data-version'),
        last_seen: li.getAttribute('data-last-seen'),
      }));
      rows.set(username, li);
    }
    for (const name of state.keys()) {
      renderRow(name);  // turns the server's UTC dates into relative times
    }
    reorder();
    updateSummary();
  }

  function applySnapshot(msg) {
    if (typeof msg.me === 'string' && msg.me !== '') {
      me = msg.me;
      if (meHolder) {
        meHolder.setAttribute('data-me', me);
      }
    }
    const next = new Map();
    const users = Array.isArray(msg.users) ? msg.users : [];
    for (const raw of users) {
      if (raw && typeof raw.username === 'string' && raw.username !== '') {
        next.set(raw.username, normalize(raw));
      }
    }
    for (const [name, li] of rows) {
      if (!next.has(name)) {
        rows.delete(name);
        if (li.parentNode) {
          li.parentNode.removeChild(li);
        }
      }
    }
    state.clear();
    for (const [name, user] of next) {
      state.set(name, user);
      renderRow(name);
    }
    reorder();
    updateSummary();
  }

  function applyPresence(msg, shouldAnnounce) {
    const username = msg.username;
    if (typeof username !== 'string' || username === '') {
      return;
    }
    const incoming = normalize(msg);
    const known = state.get(username);
    if (known && !isNewer(incoming.version, known.version)) {
      console.debug('presence: stale event ignored', username, incoming.version, '<=', known.version);
      return;
    }
    state.set(username, incoming);
    renderRow(username);
    reorder();
    updateSummary();
    if (!shouldAnnounce) {
      return;
    }
    if (!known) {
      announce(incoming.online ? username + ' is now online' : username + ' signed up');
    } else if (known.online !== incoming.online) {
      announce(username + ' is now ' + (incoming.online ? 'online' : 'offline'));
    }
  }

  // ------------------------------------------------------------- connection

  let socket = null;
  let synced = false;          // snapshot received on the current socket
  let attempt = 0;             // consecutive failed connections
  let everLive = false;
  let leaving = false;         // page is being left (logout, navigation)
  let redirecting = false;
  let reconnectTimer = null;
  let countdownTimer = null;
  let stableTimer = null;
  let pingTimer = null;
  let lastFrameAt = 0;

  function setConn(stateName, text) {
    if (!connEl) {
      return;
    }
    connEl.setAttribute('data-state', stateName);
    if (connEl.textContent !== text) {
      connEl.textContent = text;
    }
  }

  function setStale(stale) {
    list.classList.toggle('is-stale', stale);
    if (stale) {
      list.setAttribute('aria-busy', 'true');
    } else {
      list.removeAttribute('aria-busy');
    }
  }

  function goToLogin() {
    if (redirecting) {
      return;
    }
    redirecting = true;
    clearTimers();
    setConn('offline', 'Signed out');
    window.location.assign('/login');
  }

  function clearTimers() {
    clearTimeout(reconnectTimer);
    clearInterval(countdownTimer);
    clearTimeout(stableTimer);
    clearInterval(pingTimer);
    reconnectTimer = countdownTimer = stableTimer = pingTimer = null;
  }

  function detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  function connect() {
    if (leaving || redirecting) {
      return;
    }
    synced = false;
    let ws;
    try {
      ws = new WebSocket((location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/ws');
    } catch (err) {
      console.debug('presence: cannot open socket', err);
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.onopen = function () {
      lastFrameAt = Date.now();
      clearTimeout(stableTimer);
      stableTimer = setTimeout(function () { attempt = 0; }, STABLE_AFTER_MS);
      clearInterval(pingTimer);
      pingTimer = setInterval(heartbeat, PING_INTERVAL_MS);
    };
    ws.onmessage = function (event) {
      lastFrameAt = Date.now();
      handleFrame(event.data);
    };
    ws.onerror = function () {
      console.debug('presence: socket error');  // a close event follows
    };
    ws.onclose = function (event) {
      onSocketGone(ws, event.code);
    };
  }

  function heartbeat() {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return;
    }
    if (Date.now() - lastFrameAt > SILENCE_LIMIT_MS) {
      console.debug('presence: connection silent, reconnecting');
      const ws = socket;
      detach(ws);
      try { ws.close(4000, 'timeout'); } catch (e) { /* already closing */ }
      onSocketGone(ws, 1006);
      return;
    }
    try {
      socket.send(JSON.stringify({ type: 'ping' }));
    } catch (e) {
      console.debug('presence: ping failed', e);
    }
  }

  function onSocketGone(ws, code) {
    if (ws !== socket) {
      return;
    }
    detach(ws);
    socket = null;
    synced = false;
    clearTimeout(stableTimer);
    clearInterval(pingTimer);
    stableTimer = pingTimer = null;
    if (leaving || redirecting) {
      return;
    }
    if (AUTH_CLOSE_CODES.indexOf(code) !== -1) {
      goToLogin();
      return;
    }
    setStale(true);
    if (everLive) {
      everLive = false;
      announce('Connection lost, reconnecting');
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (leaving || redirecting) {
      return;
    }
    clearTimeout(reconnectTimer);
    clearInterval(countdownTimer);
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempt));
    const delay = Math.random() * ceiling;  // full jitter
    attempt += 1;
    const due = Date.now() + delay;
    const showCountdown = function () {
      const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
      if (offline) {
        setConn('offline', 'Offline · retrying in ' + seconds + ' s…');
      } else {
        setConn('reconnecting', 'Reconnecting in ' + seconds + ' s…');
      }
    };
    showCountdown();
    countdownTimer = setInterval(showCountdown, 250);
    reconnectTimer = setTimeout(attemptReconnect, delay);
  }

  function attemptReconnect() {
    clearTimeout(reconnectTimer);
    clearInterval(countdownTimer);
    reconnectTimer = countdownTimer = null;
    if (leaving || redirecting || socket) {
      return;
    }
    setConn('reconnecting', 'Reconnecting…');
    fetch('/api/users', { credentials: 'same-origin', cache: 'no-store' }).then(function (response) {
      if (response.status === 401) {
        goToLogin();  // the session is gone
        return;
      }
      connect();
    }, function (err) {
      console.debug('presence: server unreachable', err);
      scheduleReconnect();
    });
  }

  function handleFrame(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      console.debug('presence: non-JSON frame ignored', data);
      return;
    }
    if (!msg || typeof msg !== 'object') {
      return;
    }
    switch (msg.type) {
      case 'snapshot': {
        const wasLive = everLive;
        applySnapshot(msg);
        synced = true;
        setStale(false);
        setConn('live', 'Live');
        if (!wasLive && attempt > 0) {
          announce('Reconnected');
        }
        everLive = true;
        break;
      }
      case 'presence':
        applyPresence(msg, synced);
        break;
      case 'pong':
        console.debug('presence: pong');
        break;
      case 'error':
        console.debug('presence: server error', msg.error);
        break;
      default:
        console.debug('presence: unknown message', msg.type);
    }
  }

  // ---------------------------------------------------------------- wiring

  readServerRows();
  setInterval(refreshTimes, RELATIVE_REFRESH_MS);

  // The logout POST ends the session and the server then closes this socket with
  // 4001; the form's own navigation must not be cut short by a redirect.
  const logoutForms = document.querySelectorAll('form[action="/logout"]');
  for (let i = 0; i < logoutForms.length; i += 1) {
    logoutForms[i].addEventListener('submit', function () { leaving = true; });
  }

  window.addEventListener('pagehide', function (event) {
    leaving = true;
    if (event.persisted && socket) {
      // Going into the back/forward cache: leave cleanly, reconnect on return.
      const ws = socket;
      detach(ws);
      socket = null;
      clearTimers();
      try { ws.close(1000, 'page hidden'); } catch (e) { /* ignore */ }
    }
  });

  window.addEventListener('pageshow', function (event) {
    if (!event.persisted) {
      return;
    }
    leaving = false;
    if (!socket) {
      clearTimers();
      attempt = 0;
      everLive = false;
      setStale(true);
      setConn('connecting', 'Connecting…');
      attemptReconnect();
    }
  });

  window.addEventListener('online', function () {
    if (!socket && reconnectTimer !== null) {
      attemptReconnect();  // network is back: don't wait out the backoff
    }
  });

  setConn('connecting', 'Connecting…');
  connect();
}());
