/* What the page knows about every user: status, per-user versions, the order and counts.
 *
 * Pure (no DOM), so `node --test tests/js/` can import it. Every incoming change is
 * applied here at once; the DOM follows once per animation frame (render.js).
 */

export function parseVersion(value) {
  if (typeof value === 'number') {
    return Number.isFinite(value) ? value : null;
  }
  if (typeof value === 'string' && value.trim() !== '') {
    const n = Number(value);
    return Number.isFinite(n) ? n : null;
  }
  return null;
}

/** A user as received (snapshot item, presence event or server-rendered row). */
export function normalize(raw) {
  return {
    online: raw.online === true || raw.online === 'true',
    version: parseVersion(raw.version),
    last_seen: (typeof raw.last_seen === 'string' && raw.last_seen !== '') ? raw.last_seen : null,
  };
}

/** A stale event (version not greater than the known one) is never applied. */
export function isNewer(incoming, known) {
  if (incoming === null || known === null) {
    return true;  // nothing to compare with: the event is the best we know
  }
  return incoming > known;
}

/**
 * The server's order (presence_app/live/presence.py: ``(name.lower(), name)``): case-folded
 * names in code-unit order, ties broken by the exact name. Not localeCompare: the list
 * must not reshuffle when the first live event re-sorts the server-rendered rows.
 * (Usernames are ASCII, so JS toLowerCase equals Python's str.lower here.)
 */
export function compareNames(a, b) {
  const la = a.toLowerCase();
  const lb = b.toLowerCase();
  if (la !== lb) {
    return la < lb ? -1 : 1;
  }
  return a < b ? -1 : (a > b ? 1 : 0);
}

/** What the search box matches: trimmed, case-folded. */
export function normalizeQuery(query) {
  return String(query === undefined || query === null ? '' : query).trim().toLowerCase();
}

/** Online first, then the server's name order (see compareNames; ``key`` is lower()). */
function compareEntries(a, ea, b, eb) {
  if (ea.online !== eb.online) {
    return ea.online ? -1 : 1;
  }
  if (ea.key !== eb.key) {
    return ea.key < eb.key ? -1 : 1;
  }
  return a < b ? -1 : (a > b ? 1 : 0);
}

function validName(name) {
  return typeof name === 'string' && name !== '';
}

/**
 * username -> {online, version, last_seen, key}, plus ``order``: every name, online first,
 * then by name, never depending on the order the server sent (a snapshot may list users in
 * any order).
 *
 * An event costs O(1): it updates the map and the counts and notes the name as "moved" if
 * it is new or changed status. The order is settled when it is next read (once per
 * animation frame at most): the moved names are taken out, sorted, and merged back in one
 * pass, O(n + k log k) for k moved names, instead of one O(n) splice per event.
 */
export class PresenceState {
  constructor() {
    this.users = new Map();
    this.onlineCount = 0;
    this.revision = 0;       // bumped whenever the order changes
    this._order = [];        // sorted, except for the names in _moved
    this._moved = new Set();
    this._match = null;      // {revision, query, names}: the last search result
  }

  get size() {
    return this.users.size;
  }

  get(name) {
    return this.users.get(name);
  }

  has(name) {
    return this.users.has(name);
  }

  get order() {
    if (this._moved.size > 0) {
      this._settle();
    }
    return this._order;
  }

  _settle() {
    const users = this.users;
    const moved = this._moved;
    this._moved = new Set();
    const cmp = (a, b) => compareEntries(a, users.get(a), b, users.get(b));
    const kept = this._order.filter((name) => !moved.has(name));
    const added = Array.from(moved).sort(cmp);
    const merged = new Array(kept.length + added.length);
    let i = 0;
    let j = 0;
    let k = 0;
    while (i < kept.length && j < added.length) {
      merged[k++] = cmp(kept[i], added[j]) <= 0 ? kept[i++] : added[j++];
    }
    while (i < kept.length) {
      merged[k++] = kept[i++];
    }
    while (j < added.length) {
      merged[k++] = added[j++];
    }
    this._order = merged;
    this.revision += 1;
  }

  _entry(raw, name) {
    const user = normalize(raw);
    user.key = name.toLowerCase();
    return user;
  }

  _sortAll() {
    const users = this.users;
    this._moved = new Set();
    this._order = Array.from(users.keys());
    this._order.sort((a, b) => compareEntries(a, users.get(a), b, users.get(b)));
    this.revision += 1;
  }

  /** Users the server rendered into the page (only names not known yet). */
  seed(items) {
    let added = 0;
    for (const raw of items) {
      if (!raw || !validName(raw.username) || this.users.has(raw.username)) {
        continue;
      }
      const entry = this._entry(raw, raw.username);
      this.users.set(raw.username, entry);
      if (entry.online) {
        this.onlineCount += 1;
      }
      added += 1;
    }
    if (added) {
      this._sortAll();
    }
    return added;
  }

  /** A snapshot: the whole truth, replacing everything (users it omits are gone). */
  replace(items) {
    this.users = new Map();
    this.onlineCount = 0;
    for (const raw of Array.isArray(items) ? items : []) {
      if (!raw || !validName(raw.username)) {
        continue;
      }
      const entry = this._entry(raw, raw.username);
      const old = this.users.get(raw.username);
      if (old && old.online) {
        this.onlineCount -= 1;  // listed twice: the later item wins
      }
      this.users.set(raw.username, entry);
      if (entry.online) {
        this.onlineCount += 1;
      }
    }
    this._sortAll();
  }

  /**
   * A presence event. Returns ``{username, previous, current}`` when applied (``previous``
   * undefined for a name not seen before), ``null`` when ignored (malformed or stale).
   */
  apply(raw) {
    if (!raw || !validName(raw.username)) {
      return null;
    }
    const username = raw.username;
    const previous = this.users.get(username);
    const current = this._entry(raw, username);
    if (previous && !isNewer(current.version, previous.version)) {
      return null;
    }
    this.users.set(username, current);
    if (!previous || previous.online !== current.online) {
      this._moved.add(username);  // a new place in the order, settled when next read
      this.onlineCount += (current.online ? 1 : 0) - (previous && previous.online ? 1 : 0);
    }
    return { username, previous, current };
  }

  /**
   * A deleted account (a ``removed`` message): forgotten, its row goes with the next render.
   * Returns the entry removed, or ``null`` for a name not known (or malformed).
   */
  remove(raw) {
    if (!raw || !validName(raw.username) || !this.users.has(raw.username)) {
      return null;
    }
    const username = raw.username;
    const entry = this.users.get(username);
    this.users.delete(username);
    if (entry.online) {
      this.onlineCount -= 1;
    }
    this._moved.delete(username);
    this._order = this._order.filter((name) => name !== username);
    this.revision += 1;
    return entry;
  }

  /** Names matching ``query`` (see normalizeQuery), in list order; cached per revision. */
  matching(query) {
    const q = normalizeQuery(query);
    if (q === '') {
      return this.order;
    }
    const order = this.order;  // settles first: the revision below is current
    const cached = this._match;
    if (cached && cached.revision === this.revision && cached.query === q) {
      return cached.names;
    }
    const names = [];
    const users = this.users;
    for (const name of order) {
      if (users.get(name).key.includes(q)) {
        names.push(name);
      }
    }
    this._match = { revision: this.revision, query: q, names };
    return names;
  }
}
