// The pure part of the list view (static/js/render.js): which rows are drawn. Importing the
// module must not touch the DOM (Node has none).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DEFAULT_PAGE_SIZE, visibleWindow } from '../../static/js/render.js';
import { PresenceState } from '../../static/js/state.js';

function bigState(n) {
  const state = new PresenceState();
  const users = [];
  for (let i = 0; i < n; i += 1) {
    users.push({ username: 'member-' + String(i).padStart(5, '0'), online: i % 17 === 0,
      version: 1, last_seen: null });
  }
  state.replace(users);
  return state;
}

test('only a page of rows is drawn, whatever the number of users', () => {
  const state = bigState(10000);
  const { names, matched } = visibleWindow(state, '', DEFAULT_PAGE_SIZE);
  assert.equal(names.length, DEFAULT_PAGE_SIZE);
  assert.equal(matched, 10000);
  assert.deepEqual(names.slice(0, 2), ['member-00000', 'member-00017']);  // online first
  assert.equal(visibleWindow(state, '', 300).names.length, 300);
});

test('the window follows the search', () => {
  const state = bigState(10000);
  const { names, matched } = visibleWindow(state, 'MEMBER-0004', DEFAULT_PAGE_SIZE);
  assert.equal(matched, 10);  // member-00040 .. member-00049
  assert.ok(names.every((n) => n.startsWith('member-0004')));
  assert.deepEqual(visibleWindow(state, 'member-00042', 100).names, ['member-00042']);
  assert.deepEqual(visibleWindow(state, 'nobody', 100), { names: [], matched: 0 });
});

test('a removed user leaves the drawn window; the next one moves up', () => {
  const state = bigState(300);
  const before = visibleWindow(state, '', DEFAULT_PAGE_SIZE).names;
  state.remove({ type: 'removed', username: before[1] });
  const { names, matched } = visibleWindow(state, '', DEFAULT_PAGE_SIZE);
  assert.equal(matched, 299);
  assert.ok(!names.includes(before[1]));
  assert.deepEqual(names.slice(0, 2), [before[0], before[2]]);
  assert.equal(names.length, Math.min(DEFAULT_PAGE_SIZE, 299));
});
