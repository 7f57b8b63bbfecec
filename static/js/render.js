/* The list in the DOM: one update per animation frame, only a page of rows at a time.
 *
 * Rows are clones of the server's <template id="user-row"> (templates/users.html renders
 * the same macro for its own rows), filled in with textContent / setAttribute only: user
 * data never goes through innerHTML. Nothing here touches the DOM at import time.
 */

import {
  absoluteTime, formatCount, listStatusText, parseIso, plural, relativeTime, showMoreText,
  titleText,
} from './format.js';
import { normalizeQuery } from './state.js';

export const DEFAULT_PAGE_SIZE = 100;
const TITLE_EVERY_MS = 1000;

/**
 * The rows to show: the first ``limit`` names of the (filtered) order. Pure: the DOM
 * holds at most ``limit`` rows whatever the number of users.
 */
export function visibleWindow(state, query, limit) {
  const matched = state.matching(query);
  return { names: matched.length > limit ? matched.slice(0, limit) : matched,
    matched: matched.length };
}

export function fillTime(timeEl, now) {
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

export class ListView {
  /**
   * ``els``: list, template, count, total, empty, status, more (elements; all but list
   * and template optional); ``options``: pageSize, pageName (the tab title's last part).
   */
  constructor(els, state, options) {
    this.els = els;
    this.state = state;
    this.doc = els.list.ownerDocument;
    this.win = this.doc.defaultView;
    this.pageSize = options.pageSize || DEFAULT_PAGE_SIZE;
    this.pageName = options.pageName;
    this.limit = this.pageSize;
    this.query = '';
    this.me = '';
    this.complete = false;     // a snapshot has arrived: counts and totals are the truth
    this.rows = new Map();     // username -> <li> in the list
    this.dirty = new Set();    // names whose row must be refilled
    this.allDirty = false;
    this.timesDue = false;
    this.frame = null;
    this.title = '';
    this.titleAt = 0;          // Date.now() of the last change of document.title
    this.titleTimer = null;
  }

  /** Reads the server-rendered rows into the state and adopts their elements. */
  adoptServerRows() {
    const items = this.els.list.querySelectorAll('li[data-username]');
    const seeds = [];
    for (const li of items) {
      const username = li.getAttribute('data-username');
      if (!username || this.rows.has(username)) {
        li.remove();
        continue;
      }
      seeds.push({
        username,
        online: li.getAttribute('data-online'),
        version: li.getAttribute('data-version'),
        last_seen: li.getAttribute('data-last-seen'),
      });
      this.rows.set(username, li);
    }
    this.state.seed(seeds);
    this.invalidateAll();  // turns the server's UTC dates into relative times
  }

  changed(name) {
    this.dirty.add(name);
    this.schedule();
  }

  invalidateAll() {
    this.allDirty = true;
    this.schedule();
  }

  refreshTimes() {
    this.timesDue = true;
    this.schedule();
  }

  setQuery(query) {
    const q = normalizeQuery(query);
    if (q === this.query) {
      return;
    }
    this.query = q;
    this.limit = this.pageSize;  // a new search starts at its first page
    this.schedule();
  }

  showMore() {
    this.limit += this.pageSize;
    this.schedule();
  }

  /** At most one DOM update per animation frame, however many events came in. */
  schedule() {
    if (this.frame !== null) {
      return;
    }
    this.frame = this.win.requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  render() {
    const { names, matched } = visibleWindow(this.state, this.query, this.limit);
    const now = Date.now();
    const keep = new Set(names);
    for (const [name, li] of this.rows) {
      if (!keep.has(name)) {
        this.rows.delete(name);
        li.remove();
      }
    }
    for (const name of names) {
      let li = this.rows.get(name);
      if (!li) {
        li = this.doc.createElement('li');
        this.rows.set(name, li);
        this.fill(li, name, now);
      } else if (this.allDirty || this.dirty.has(name)) {
        this.fill(li, name, now);
      } else if (this.timesDue) {
        const time = li.querySelector('time[datetime]');
        if (time) {
          fillTime(time, now);
        }
      }
    }
    this.dirty.clear();
    this.allDirty = false;
    this.timesDue = false;
    this.reorder(names);
    this.summarize(names.length, matched);
  }

  /** (Re)fills one row from the template; the same markup as templates/users.html. */
  fill(li, username, now) {
    const user = this.state.get(username);
    const proto = this.els.template.content.firstElementChild;
    const fresh = proto.cloneNode(true);
    li.className = 'user ' + (user.online ? 'is-online' : 'is-offline');
    li.setAttribute('data-username', username);
    li.setAttribute('data-online', user.online ? 'true' : 'false');
    li.setAttribute('data-version', user.version === null ? '' : String(user.version));
    li.setAttribute('data-last-seen', user.last_seen || '');
    fresh.querySelector('.name').textContent = username;
    if (username !== this.me) {
      fresh.querySelector('.you').remove();
    }
    fresh.querySelector('.status').textContent = user.online ? 'Online' : 'Offline';
    const seen = fresh.querySelector('.seen');
    if (user.online || !user.last_seen) {
      seen.remove();
    } else {
      const time = seen.querySelector('time');
      time.setAttribute('datetime', user.last_seen);
      fillTime(time, now);
    }
    li.replaceChildren(...fresh.childNodes);
  }

  /** Puts the rows in order, moving as few as possible; drops anything else. */
  reorder(names) {
    const list = this.els.list;
    let ref = list.firstElementChild;
    for (const name of names) {
      const li = this.rows.get(name);
      if (li === ref) {
        ref = ref.nextElementSibling;
      } else {
        list.insertBefore(li, ref);
      }
    }
    while (ref) {
      const next = ref.nextElementSibling;
      ref.remove();
      ref = next;
    }
  }

  /**
   * The tab title, at most once a second (the latest value wins): setting document.title
   * costs about 2 ms in Chromium (it goes to the browser process), too much for every frame
   * of a storm, and nobody reads a tab title sixty times a second.
   */
  setTitle(title) {
    this.title = title;
    if (this.titleTimer !== null || this.doc.title === title) {
      return;
    }
    const wait = this.titleAt + TITLE_EVERY_MS - Date.now();
    if (wait <= 0) {
      this.titleAt = Date.now();
      this.doc.title = title;
      return;
    }
    this.titleTimer = this.win.setTimeout(() => {
      this.titleTimer = null;
      this.titleAt = 0;
      this.setTitle(this.title);
    }, wait);
  }

  summarize(shown, matched) {
    const { count, total, empty, status, more } = this.els;
    const state = this.state;
    if (this.complete) {
      setText(count, formatCount(state.onlineCount));
      setText(total, plural(state.size, 'user', 'users'));
      this.setTitle(titleText(state.onlineCount, state.size, this.pageName));
    }
    if (empty) {
      empty.hidden = state.size > 0;
    }
    if (!this.complete) {
      return;  // the server's own "Showing … of …" stays until the whole list is known
    }
    const text = listStatusText({ query: this.query, shown, matched, total: state.size });
    if (status) {
      setText(status, text);
      status.hidden = text === '';
    }
    if (more) {
      more.hidden = shown >= matched;
      setText(more, showMoreText(shown, matched, this.pageSize));
    }
  }
}

function setText(el, text) {
  if (el && el.textContent !== text) {
    el.textContent = text;
  }
}
