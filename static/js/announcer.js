/* Screen-reader announcements (the page's one aria-live="polite" region), batched: changes
 * that arrive together become one message, at most ANNOUNCE_MAX of them by name. */

import { composeAnnouncement } from './format.js';

export const ANNOUNCE_DELAY_MS = 150;
export const ANNOUNCE_MAX = 3;

export class Announcer {
  constructor(region) {
    this.region = region;
    this.pending = [];
    this.timer = null;
  }

  say(text) {
    if (!this.region) {
      return;
    }
    this.pending.push(text);
    if (this.timer === null) {
      this.timer = setTimeout(() => this.flush(), ANNOUNCE_DELAY_MS);
    }
  }

  flush() {
    this.timer = null;
    const text = composeAnnouncement(this.pending, ANNOUNCE_MAX);
    this.pending = [];
    if (text === '') {
      return;
    }
    const region = this.region;
    if (region.textContent === text) {
      // Same words again: clear first so screen readers announce it anew.
      region.textContent = '';
      setTimeout(() => { region.textContent = text; }, 50);
    } else {
      region.textContent = text;
    }
  }
}
