/* Text the page shows: counts, summaries, "last seen" times, announcements.
 *
 * Pure functions only (no DOM), so `node --test tests/js/` can import them.
 */

/** 1234567 -> "1,234,567": the same digits Python's f"{n:,}" gives the server's HTML. */
export function formatCount(n) {
  const value = Math.max(0, Math.trunc(Number(n) || 0));
  return String(value).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

export function plural(n, one, many) {
  return formatCount(n) + ' ' + (n === 1 ? one : many);
}

/** "301 online · 1,001 users": beside the heading and in the tab title. */
export function summaryText(online, total) {
  return formatCount(online) + ' online · ' + plural(total, 'user', 'users');
}

export function titleText(online, total, pageName) {
  return summaryText(online, total) + ' · ' + pageName;
}

/**
 * The line above "Show more": what part of the (possibly filtered) list is on screen.
 * Empty when everything is shown and nothing is filtered (small lists stay uncluttered).
 */
export function listStatusText({ query, shown, matched, total }) {
  if (query) {
    if (matched === 0) {
      return 'No users match “' + query + '”.';
    }
    const what = plural(matched, 'user matches', 'users match') + ' “' + query + '”';
    return shown < matched ? 'Showing ' + formatCount(shown) + ' of ' + what + '.' : what + '.';
  }
  if (shown < total) {
    return 'Showing ' + formatCount(shown) + ' of ' + plural(total, 'user', 'users') + '.';
  }
  return '';
}

export function showMoreText(shown, matched, pageSize) {
  const next = Math.min(pageSize, Math.max(0, matched - shown));
  return 'Show ' + formatCount(next) + ' more';
}

/** Several presence changes in one announcement, at most ``max`` named. */
export function composeAnnouncement(messages, max) {
  if (messages.length === 0) {
    return '';
  }
  let text = messages.slice(0, max).join('. ');
  if (messages.length > max) {
    const more = messages.length - max;
    text += '. And ' + formatCount(more) + ' more ' + (more === 1 ? 'change' : 'changes');
  }
  return text;
}

/** The server's ISO 8601 UTC strings (also "+00:00", a space, microseconds) as a Date. */
export function parseIso(text) {
  if (!text) {
    return null;
  }
  let t = String(text).trim().replace(' ', 'T');
  t = t.replace(/(\.\d{3})\d+/, '$1');             // micro- to milliseconds
  t = t.replace(/([+-]\d{2})(\d{2})$/, '$1:$2');    // +0000 -> +00:00
  if (!/(Z|[+-]\d{2}:\d{2})$/i.test(t)) {
    t += 'Z';                                       // the server sends UTC (docs/PROTOCOL.md)
  }
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function relativeTime(date, now) {
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
  return format(dayFormat, date, () => date.toDateString());
}

export function absoluteTime(date) {
  return format(stampFormat, date, () => date.toLocaleString());
}

// Date.toLocale*String(locale, options) builds a new formatter on every call (about 0.1 ms
// each in Chromium): with a page of 100 offline rows that is a dropped frame. One of each.
const dayFormat = { options: { year: 'numeric', month: 'short', day: 'numeric' }, fmt: null };
const stampFormat = { options: { dateStyle: 'medium', timeStyle: 'short' }, fmt: null };

function format(holder, date, fallback) {
  try {
    if (holder.fmt === null) {
      holder.fmt = new Intl.DateTimeFormat(undefined, holder.options);
    }
    return holder.fmt.format(date);
  } catch (e) {
    return fallback();
  }
}
