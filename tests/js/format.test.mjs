// Texts the page shows (static/js/format.js).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  composeAnnouncement, formatCount, listStatusText, parseIso, relativeTime, showMoreText,
  summaryText, titleText,
} from '../../static/js/format.js';

test('counts get thousands separators like Python f"{n:,}"', () => {
  assert.equal(formatCount(0), '0');
  assert.equal(formatCount(999), '999');
  assert.equal(formatCount(1001), '1,001');
  assert.equal(formatCount(1234567), '1,234,567');
  assert.equal(formatCount(-3), '0');
});

test('summary and title carry the online count and the total', () => {
  assert.equal(summaryText(301, 1001), '301 online · 1,001 users');
  assert.equal(summaryText(1, 1), '1 online · 1 user');
  assert.equal(summaryText(0, 0), '0 online · 0 users');
  assert.equal(titleText(2, 5000, "Who's online · Presence"),
    "2 online · 5,000 users · Who's online · Presence");
});

test('the status line says what part of the list is shown', () => {
  assert.equal(listStatusText({ query: '', shown: 6, matched: 6, total: 6 }), '');
  assert.equal(listStatusText({ query: '', shown: 100, matched: 5001, total: 5001 }),
    'Showing 100 of 5,001 users.');
  assert.equal(listStatusText({ query: 'bob', shown: 1, matched: 1, total: 9 }),
    '1 user matches “bob”.');
  assert.equal(listStatusText({ query: 'm', shown: 100, matched: 1234, total: 5000 }),
    'Showing 100 of 1,234 users match “m”.');
  assert.equal(listStatusText({ query: 'zz', shown: 0, matched: 0, total: 5000 }),
    'No users match “zz”.');
  assert.equal(showMoreText(100, 5001, 100), 'Show 100 more');
  assert.equal(showMoreText(100, 130, 100), 'Show 30 more');
});

test('announcements: at most three by name, then a count', () => {
  assert.equal(composeAnnouncement([], 3), '');
  assert.equal(composeAnnouncement(['a is now online'], 3), 'a is now online');
  assert.equal(composeAnnouncement(['a', 'b', 'c', 'd'], 3), 'a. b. c. And 1 more change');
  assert.equal(composeAnnouncement(Array(1003).fill('x'), 3), 'x. x. x. And 1,000 more changes');
});

test('ISO times from the server, with or without zone or with microseconds', () => {
  const expected = Date.UTC(2026, 10, 24, 14, 3, 12, 123);
  for (const text of ['2026-11-24T14:03:12.123Z', '2026-11-24T14:03:12.123456+00:00',
    '2026-11-24 14:03:12.123', '2026-11-24T14:03:12.123+0000']) {
    assert.equal(parseIso(text).getTime(), expected, text);
  }
  assert.equal(parseIso(''), null);
  assert.equal(parseIso('yesterday'), null);
});

test('relative times', () => {
  const now = Date.UTC(2026, 0, 10, 12, 0, 0);
  const ago = (ms) => relativeTime(new Date(now - ms), now);
  assert.equal(ago(5_000), 'just now');
  assert.equal(ago(61_000), '1 min ago');
  assert.equal(ago(3 * 3600_000), '3 h ago');
  assert.equal(ago(2 * 86400_000), '2 d ago');
  assert.match(ago(30 * 86400_000), /2025/);
});
