// Injected by the end-to-end tests before any page script runs (context.add_init_script).
// Measures what a person would feel, from inside the page:
//  - main-thread stalls: the longest gap between ticks of a 5 ms interval, and between
//    animation frames, while recording;
//  - DOM updates: mutation batches in the list, its summary and status line, beside the
//    number of animation frames (one update per frame at most);
//  - WebSocket frames the page received;
//  - for each `input` event of the search box, how long until the list changed;
//  - when the login form was submitted and when the page went live (Date.now(), ms).
(() => {
  const now = () => performance.now();
  const probe = {
    recording: false, maxTickGap: 0, maxFrameGap: 0, frames: 0, batches: 0, wsFrames: 0,
    inputs: [], mutationTimes: [], liveAt: null,
  };
  let lastTick = 0;
  let lastFrame = 0;

  probe.start = () => {
    probe.recording = true;
    probe.maxTickGap = probe.maxFrameGap = 0;
    probe.frames = probe.batches = probe.wsFrames = 0;
    lastTick = lastFrame = now();
    return true;
  };
  probe.stop = () => {
    probe.recording = false;
    return { maxTickGap: probe.maxTickGap, maxFrameGap: probe.maxFrameGap,
      frames: probe.frames, batches: probe.batches, wsFrames: probe.wsFrames };
  };

  setInterval(() => {
    const t = now();
    if (probe.recording) {
      probe.maxTickGap = Math.max(probe.maxTickGap, t - lastTick);
    }
    lastTick = t;
  }, 5);

  const frame = () => {
    const t = now();
    if (probe.recording) {
      probe.frames += 1;
      probe.maxFrameGap = Math.max(probe.maxFrameGap, t - lastFrame);
    }
    lastFrame = t;
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);

  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => { probe.wsFrames += 1; });
    }
  };

  document.addEventListener('input', (event) => {
    if (event.target && event.target.id === 'user-search') {
      probe.inputs.push({ t: now(), value: event.target.value });
    }
  }, true);
  document.addEventListener('submit', () => {
    sessionStorage.setItem('e2eSubmittedAt', String(Date.now()));
  }, true);

  const watch = () => {
    const targets = ['user-list', 'list-status', 'online-count', 'user-total']
      .map((id) => document.getElementById(id)).filter(Boolean);
    if (targets.length) {
      const observer = new MutationObserver(() => {
        probe.mutationTimes.push(now());
        if (probe.recording) {
          probe.batches += 1;
        }
      });
      for (const target of targets) {
        observer.observe(target, { childList: true, subtree: true, attributes: true,
          characterData: true });
      }
    }
    const status = document.getElementById('conn-status');
    if (status) {
      new MutationObserver(() => {
        if (probe.liveAt === null && status.getAttribute('data-state') === 'live') {
          probe.liveAt = Date.now();
        }
      }).observe(status, { attributes: true, attributeFilter: ['data-state'] });
    }
  };
  document.addEventListener('DOMContentLoaded', watch);
  window.__probe = probe;
})();
