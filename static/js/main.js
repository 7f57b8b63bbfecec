/* Presence: the live "who's online" list. Wires the state, the list view, the connection
 * and the page's controls together (see docs/PROTOCOL.md, "WebSocket `/ws`").
 *
 * The server renders the online users and a first page of the others; the snapshot brings
 * the rest. Events change the state at once and the DOM once per animation frame.
 */

import { Announcer } from './announcer.js';
import { PresenceConnection, socketUrl } from './connection.js';
import { DEFAULT_PAGE_SIZE, ListView } from './render.js';
import { PresenceState } from './state.js';

const RELATIVE_REFRESH_MS = 30000;  // "last seen" texts are recomputed this often
const PAGE_NAME = "Who's online · Presence";

function start() {
  const list = document.getElementById('user-list');
  const template = document.getElementById('user-row');
  if (!list || !template) {
    return;
  }
  const meHolder = document.querySelector('[data-me]');
  const connEl = document.getElementById('conn-status');
  const search = document.getElementById('user-search');
  const more = document.getElementById('show-more');
  const announcer = new Announcer(document.getElementById('announcer'));
  const state = new PresenceState();
  const view = new ListView({
    list,
    template,
    count: document.getElementById('online-count'),
    total: document.getElementById('user-total'),
    empty: document.getElementById('empty-state'),
    status: document.getElementById('list-status'),
    more,
  }, state, {
    pageSize: Number(list.getAttribute('data-page-size')) || DEFAULT_PAGE_SIZE,
    pageName: PAGE_NAME,
  });
  view.me = meHolder ? meHolder.getAttribute('data-me') || '' : '';
  view.adoptServerRows();

  function setStale(stale) {
    list.classList.toggle('is-stale', stale);
    if (stale) {
      list.setAttribute('aria-busy', 'true');
    } else {
      list.removeAttribute('aria-busy');
    }
  }

  const connection = new PresenceConnection(socketUrl(window.location), {
    snapshot(msg) {
      if (typeof msg.me === 'string' && msg.me !== '') {
        view.me = msg.me;
        if (meHolder) {
          meHolder.setAttribute('data-me', msg.me);
        }
      }
      state.replace(msg.users);
      view.complete = true;
      view.invalidateAll();
    },
    presence(msg, shouldAnnounce) {
      const change = state.apply(msg);
      if (change === null) {
        console.debug('presence: stale or malformed event ignored', msg.username, msg.version);
        return;
      }
      view.changed(change.username);
      if (!shouldAnnounce) {
        return;
      }
      const { username, previous, current } = change;
      if (!previous) {
        announcer.say(current.online ? username + ' is now online' : username + ' signed up');
      } else if (previous.online !== current.online) {
        announcer.say(username + ' is now ' + (current.online ? 'online' : 'offline'));
      }
    },
    removed(msg, shouldAnnounce) {
      if (state.remove(msg) === null) {
        return;
      }
      view.changed(msg.username);  // the next render drops its row
      if (shouldAnnounce) {
        announcer.say(msg.username + ' was removed');
      }
    },
    status(name, text) {
      if (!connEl) {
        return;
      }
      connEl.setAttribute('data-state', name);
      if (connEl.textContent !== text) {
        connEl.textContent = text;
      }
    },
    stale: setStale,
    announce: (text) => announcer.say(text),
    authLost: () => window.location.assign('/login'),
  });

  const tools = document.getElementById('list-tools');
  if (tools) {
    // The list already narrows as you type; the GET form is for pages without this script.
    tools.addEventListener('submit', (event) => event.preventDefault());
  }
  if (search) {
    search.addEventListener('input', () => view.setQuery(search.value));
    view.setQuery(search.value);  // a value the browser restored on back/forward
  }
  if (more) {
    more.addEventListener('click', () => view.showMore());
  }
  setInterval(() => view.refreshTimes(), RELATIVE_REFRESH_MS);

  // The logout POST ends the session and the server then closes this socket with
  // 4001; the form's own navigation must not be cut short by a redirect.
  for (const form of document.querySelectorAll('form[action="/logout"]')) {
    form.addEventListener('submit', () => connection.leave());
  }
  window.addEventListener('pagehide', (event) => {
    if (event.persisted) {
      connection.suspend();
    } else {
      connection.leave();
    }
  });
  window.addEventListener('pageshow', (event) => {
    if (event.persisted) {
      connection.resume();
    }
  });
  window.addEventListener('online', () => connection.networkBack());

  connection.start();
}

start();
