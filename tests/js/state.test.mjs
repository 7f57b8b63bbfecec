// The page's state: versions, ordering, filtering, counts (static/js/state.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  PresenceState, compareNames, isNewer, normalize, normalizeQuery, parseVersion,
} from '../../static/js/state.js';

const user = (username, online, version = 1, last_seen = null) =>
  ({ username, online, version, last_seen });

/** The server's order (presence_app/live/presence.py): online first, lower(), then the name. */
function serverOrder(users) {
  return [...users].sort((a, b) => {
    if (a.online !== b.online) return a.online ? -1 : 1;
    const la = a.username.toLowerCase();
    const lb = b.username.toLowerCase();
    if (la !== lb) return la < lb ? -1 : 1;
    return a.username < b.username ? -1 : (a.username > b.username ? 1 : 0);
  }).map((u) => u.username);
}

test('versions: numbers and numeric strings, anything else unknown', () => {
  assert.equal(parseVersion(7), 7);
  assert.equal(parseVersion('1796160686901218'), 1796160686901218);
  assert.equal(parseVersion(''), null);
  assert.equal(parseVersion(' '), null);
  assert.equal(parseVersion('abc'), null);
  assert.equal(parseVersion(NaN), null);
  assert.equal(parseVersion(undefined), null);
  assert.equal(isNewer(2, 1), true);
  assert.equal(isNewer(1, 1), false);
  assert.equal(isNewer(0, 1), false);
  assert.equal(isNewer(null, 5), true);
  assert.equal(isNewer(5, null), true);
});

test('normalize reads server-rendered attributes and JSON alike', () => {
  assert.deepEqual(normalize({ online: 'true', version: '3', last_seen: '' }),
    { online: true, version: 3, last_seen: null });
  assert.deepEqual(normalize({ online: false, version: 4, last_seen: '2026-01-01T00:00:00Z' }),
    { online: false, version: 4, last_seen: '2026-01-01T00:00:00Z' });
  assert.equal(normalize({ online: 'yes' }).online, false);
});

test('names sort like the server: lower() then code units, not the locale', () => {
  const names = ['zoe', 'dev_x', 'Bob', 'dev-x', 'dev1x', 'Dev.y', '_zed', 'carol', 'bob'];
  const sorted = [...names].sort(compareNames);
  // Python: sorted(names, key=lambda n: (n.lower(), n))
  assert.deepEqual(sorted, ['_zed', 'Bob', 'bob', 'carol', 'dev-x', 'Dev.y', 'dev1x', 'dev_x',
    'zoe']);
});

test('a snapshot in any order is shown online first, then by name', () => {
  const users = [user('zoe', false), user('amy', true), user('Bob', false), user('carl', true),
    user('bob2', true), user('Al', false)];
  for (const shuffled of [users, [...users].reverse(), [users[3], users[0], users[5], users[1],
    users[4], users[2]]]) {
    const state = new PresenceState();
    state.replace(shuffled);
    assert.deepEqual(state.order, ['amy', 'bob2', 'carl', 'Al', 'Bob', 'zoe']);
    assert.equal(state.onlineCount, 3);
    assert.equal(state.size, 6);
  }
});

test('a snapshot replaces everything: users it omits are gone', () => {
  const state = new PresenceState();
  state.replace([user('a1', true), user('b1', true)]);
  state.replace([user('b1', false)]);
  assert.deepEqual(state.order, ['b1']);
  assert.equal(state.onlineCount, 0);
  assert.equal(state.has('a1'), false);
});

test('malformed snapshot items are skipped, duplicates counted once', () => {
  const state = new PresenceState();
  state.replace([null, { username: '' }, { online: true }, user('x1', true), user('x1', true)]);
  assert.deepEqual(state.order, ['x1']);
  assert.equal(state.onlineCount, 1);
  state.replace('not a list');
  assert.equal(state.size, 0);
});

test('stale and repeated events are never applied; newer ones are', () => {
  const state = new PresenceState();
  state.replace([user('bob', true, 10)]);
  assert.equal(state.apply(user('bob', false, 9)), null);
  assert.equal(state.apply(user('bob', false, 10)), null);
  assert.equal(state.get('bob').online, true);
  const change = state.apply(user('bob', false, 11, '2026-01-01T00:00:00.000Z'));
  assert.equal(change.username, 'bob');
  assert.equal(change.previous.online, true);
  assert.equal(change.current.online, false);
  assert.equal(state.get('bob').last_seen, '2026-01-01T00:00:00.000Z');
  assert.equal(state.onlineCount, 0);
  assert.equal(state.apply({ type: 'presence' }), null);
  assert.equal(state.apply(null), null);
});

test('events keep the order and the counts right, one user at a time', () => {
  const state = new PresenceState();
  state.replace([user('m', false), user('c', true), user('x', false)]);
  state.apply(user('x', true, 2));
  assert.deepEqual(state.order, ['c', 'x', 'm']);
  state.apply(user('c', false, 2));
  assert.deepEqual(state.order, ['x', 'c', 'm']);
  const signup = state.apply(user('a', false, null));  // a new sign-up: never seen online
  assert.equal(signup.previous, undefined);
  assert.deepEqual(state.order, ['x', 'a', 'c', 'm']);
  assert.equal(state.onlineCount, 1);
  assert.equal(state.size, 4);
});

test('a random stream of events ends in the server order and the right count', () => {
  let seed = 42;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  const truth = new Map();
  const initial = [];
  for (let i = 0; i < 500; i += 1) {
    const name = (random() < 0.3 ? 'User' : 'user') + Math.floor(random() * 10000);
    const u = user(name, random() < 0.4, 1);
    truth.set(name, u);
    initial.push(u);
  }
  const state = new PresenceState();
  state.replace(initial);
  for (let i = 0; i < 3000; i += 1) {
    const names = [...truth.keys()];
    const name = random() < 0.05 ? 'new' + i : names[Math.floor(random() * names.length)];
    const old = truth.get(name);
    const next = user(name, random() < 0.5, (old ? old.version : 0) + 1);
    if (random() < 0.1 && old) {
      state.apply(user(name, !old.online, old.version - 1));  // a stale one: ignored
    }
    truth.set(name, next);
    state.apply(next);
    if (i % 250 === 0) {  // the order is settled on every read, not only at the end
      assert.deepEqual(state.order, serverOrder([...truth.values()]));
    }
  }
  const all = [...truth.values()];
  assert.deepEqual(state.order, serverOrder(all));
  assert.equal(state.onlineCount, all.filter((u) => u.online).length);
  assert.equal(state.size, all.length);
});

test('seed adds the server-rendered rows without overwriting what is known', () => {
  const state = new PresenceState();
  assert.equal(state.seed([{ username: 'b', online: 'true', version: '5', last_seen: '' },
    { username: 'a', online: 'false', version: '', last_seen: '2026-01-01T00:00:00Z' }]), 2);
  assert.deepEqual(state.order, ['b', 'a']);
  assert.equal(state.seed([{ username: 'b', online: 'false', version: '9' }]), 0);
  assert.equal(state.get('b').online, true);
  assert.equal(state.get('a').version, null);
});

test('search: case-insensitive substring of the name, trimmed, in list order', () => {
  const state = new PresenceState();
  state.replace([user('Member-0042', false), user('member-0040', true), user('bob', true),
    user('MEMBER-1042', false)]);
  assert.deepEqual(state.matching('  mEmBeR-0 '), ['member-0040', 'Member-0042']);
  assert.deepEqual(state.matching('042'), ['Member-0042', 'MEMBER-1042']);
  assert.deepEqual(state.matching(''), state.order);
  assert.deepEqual(state.matching('zzz'), []);
  assert.equal(normalizeQuery(undefined), '');
  assert.equal(normalizeQuery(' A b '), 'a b');
});

test('search results follow events (cache invalidated when the order changes)', () => {
  const state = new PresenceState();
  state.replace([user('ann', false), user('anna', false), user('bo', true)]);
  assert.deepEqual(state.matching('ann'), ['ann', 'anna']);
  state.apply(user('anna', true, 2));
  assert.deepEqual(state.matching('ann'), ['anna', 'ann']);
  state.apply(user('joanne', false, 1));
  assert.deepEqual(state.matching('ann'), ['anna', 'ann', 'joanne']);
});

test('10,000 users: snapshot and 1,000 events stay fast', () => {
  const users = [];
  for (let i = 0; i < 10000; i += 1) {
    users.push(user('member-' + String((i * 7919) % 10000).padStart(5, '0'), i % 3 === 0));
  }
  const state = new PresenceState();
  const started = performance.now();
  state.replace(users);
  for (let i = 0; i < 1000; i += 1) {
    const u = users[i];
    state.apply(user(u.username, !u.online, 2));
  }
  state.matching('member-00');
  const elapsed = performance.now() - started;
  assert.equal(state.size, 10000);
  assert.ok(elapsed < 1000, `took ${elapsed.toFixed(1)} ms`);
});

test('remove: a deleted account leaves the order, the counts and the search', () => {
  const state = new PresenceState();
  state.replace([user('amy', true), user('bob', false), user('cat', true)]);
  assert.deepEqual(state.order, ['amy', 'cat', 'bob']);
  const before = state.revision;
  const gone = state.remove({ type: 'removed', username: 'cat' });
  assert.equal(gone.online, true);
  assert.deepEqual(state.order, ['amy', 'bob']);
  assert.equal(state.onlineCount, 1);
  assert.equal(state.size, 2);
  assert.equal(state.has('cat'), false);
  assert.ok(state.revision > before);
  assert.deepEqual(state.matching('c'), []);
  // A name moved by an event still waiting to be settled goes too.
  state.apply(user('bob', true, 2));
  state.remove({ username: 'bob' });
  assert.deepEqual(state.order, ['amy']);
  assert.equal(state.onlineCount, 1);
  // Unknown or malformed: nothing happens.
  assert.equal(state.remove({ username: 'nobody' }), null);
  assert.equal(state.remove({ username: 42 }), null);
  assert.equal(state.remove(null), null);
  assert.deepEqual(state.order, ['amy']);
  // Signed up again later: a presence event brings the name back.
  assert.notEqual(state.apply(user('cat', false, 1)), null);
  assert.deepEqual(state.order, ['amy', 'cat']);
});
