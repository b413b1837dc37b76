/* The dashboard's connect/resume state machine (docs/protocol.md, "Resume").
 *
 * Render GET /api/snapshot, connect to /ws/live with since=<its head>&epoch=<its epoch>, apply every event
 * above the last applied seq exactly once (seq null frames always), resume with since=<last applied seq> after
 * a drop, reload from a snapshot when the hub answers recovered=false or closes 4400/4410, stop on 4001/4003.
 * It owns the position (seq, epoch), the socket and the timers; what an event means is the caller's (hooks).
 * No DOM: a test runs a second instance beside the page's.
 */

export const State = Object.freeze({
  IDLE: 'idle',              // not started yet, or stop()ped
  LOADING: 'loading',        // fetching a snapshot; a socket follows
  CONNECTING: 'connecting',  // socket opening, or open and replaying: waiting for `replayed`
  LIVE: 'live',              // replayed with recovered=true: events apply as they arrive
  RELOADING: 'reloading',    // replayed with recovered=false: fetching a snapshot, live frames held back
  BACKOFF: 'backoff',        // waiting out a reconnect delay
  STOPPED: 'stopped',        // refused (token, origin, filter) or no token: nothing happens until start()
});

// The whole machine: which state may follow which. start() may interrupt anything (a pasted token, a new
// filter) and stop() ends anything; every other move is listed, and one that is not is a bug, reported
// through onInvalid and not taken.
const NEXT = Object.freeze({
  idle: ['loading', 'stopped'],
  loading: ['connecting', 'backoff', 'stopped'],
  connecting: ['live', 'reloading', 'backoff', 'stopped'],
  live: ['backoff', 'stopped'],
  reloading: ['live', 'backoff', 'stopped'],
  backoff: ['connecting', 'loading', 'stopped', 'backoff'],  // backoff again: a reload failed meanwhile
  stopped: ['stopped'],
});

export const BACKOFF_BASE_MS = 500;
export const BACKOFF_MAX_MS = 8000;
const SNAPSHOT_TIMEOUT_MS = 15000;
const CLOSE_CODES_KEPT = 20;

/** Close codes after which retrying cannot help: the operator has to act (a new token, the allowlist). */
export const STOP_CODES = Object.freeze({ 4001: 'unauthorized', 4003: 'forbidden' });

/** Close codes after which our position is useless: 4400 refused our since, 4410 the log was restored. */
export const RELOAD_CODES = Object.freeze(new Set([4400, 4410]));

/** Exponential backoff with jitter in [cap/2, cap]: a restarted hub is not hit by every dashboard at once. */
export function backoffDelay(attempt, random = Math.random) {
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(10, Math.max(0, attempt - 1)));
  return Math.round(cap / 2 + random() * cap / 2);
}

/** The dedup rule: a persisted event applies only above the last applied seq; seq null frames always. */
export function isNew(lastSeq, frame) {
  if (frame.seq === null || frame.seq === undefined) return true;
  return lastSeq === null || frame.seq > lastSeq;
}

/** The hub refused the token or the page's topics over HTTP (401/403): as final as close 4001. */
export class AuthFailure extends Error {}

/** The hub refused the page's filters (HTTP 422): retrying the same request cannot help. */
export class FilterRefused extends Error {}

export class Connection {
  /**
   * base: the hub's URL (the page's base URI, so a proxy prefix is kept). token: the JWT, sent as the
   * `bearer` subprotocol and header, never in a URL. params(): extra query parameters (the filters) for
   * both the snapshot and the socket, read at each request. hooks: onTransition({from, to, on, ...}),
   * onSnapshot(snap, {first, replaced}), onEvent(frame), onWelcome(frame), onInvalid(from, to, on).
   */
  constructor({ base, token = null, params = () => new URLSearchParams(), hooks = {}, random = Math.random }) {
    this.base = base;
    this.token = token;
    this.params = params;
    this.hooks = hooks;
    this.random = random;
    this.state = State.IDLE;
    this.position = { seq: null, epoch: null };
    this.stats = {
      connects: 0, reconnects: 0, resumes: 0, reloads: 0, lastMissed: 0, lastCloseCode: null, closeCodes: [],
      session: null, expiresAt: null, applied: 0, ignored: 0,
    };
    this.ws = null;
    this.gen = 0;              // bumped when a socket is dropped: its late callbacks are ignored
    this.starts = 0;           // bumped by start(): a newer start supersedes a snapshot still loading
    this.attempt = 0;
    this.timer = null;
    this.everLive = false;     // reached live since the last fresh start (counts resumes and reloads)
    this.needReload = false;   // the next connect must start from a snapshot
    this.buffer = null;        // live frames held back while RELOADING
    this.heartbeatMs = 5000;
    this.lastFrameAt = 0;
    this.pingSentAt = 0;
    this.watch = null;
  }

  // ---------------------------------------------------------------- transitions

  go(to, on, info = {}) {
    const from = this.state;
    if (!NEXT[from].includes(to) && !(on === 'start' && to === State.LOADING) && to !== State.IDLE) {
      this.hooks.onInvalid?.(from, to, on);
      return false;
    }
    this.state = to;
    this.hooks.onTransition?.({ from, to, on, everLive: this.everLive, attempt: this.attempt, ...info });
    return true;
  }

  // ---------------------------------------------------------------- commands

  /** Start over from a snapshot: the first load, a pasted token (fresh: shown as "Connecting", not counted as
   * a reload), changed filters (fresh and replace: what the caller shows belongs to another view), or a reload
   * after 4400/4410 or a failed snapshot. */
  async start(token, { fresh = false, replace = false } = {}) {
    if (token !== undefined) this.token = token;
    if (fresh) { this.everLive = false; this.attempt = 0; }
    this.cancelTimer();
    this.drop();
    this.needReload = false;
    this.buffer = null;
    this.startWatchdog();
    if (!this.token) {
      this.go(State.STOPPED, 'no-token', { why: 'no-token' });
      return;
    }
    const mine = ++this.starts;
    const reload = this.everLive;  // not the first load: after a 4400 or 4410, or a failed snapshot
    this.go(State.LOADING, 'start');
    let snap;
    try {
      snap = await this.fetchSnapshot();
    } catch (err) {
      if (mine !== this.starts || this.state !== State.LOADING) return;
      this.failed(err, 'could not load state');
      return;
    }
    if (mine !== this.starts || this.state !== State.LOADING) return;
    this.adopt(snap, replace);
    if (reload) this.stats.reloads += 1;
    this.connect();
  }

  /** Ends everything: no socket, no timer, no reconnect. */
  stop() {
    this.starts += 1;
    this.cancelTimer();
    this.drop();
    clearInterval(this.watch);
    this.watch = null;
    this.go(State.IDLE, 'stop');
  }

  /** Back online or back in view: do not sit out the rest of a long backoff. */
  hurry() {
    if (this.state !== State.BACKOFF || !this.timer) return;
    this.attempt = 0;
    this.cancelTimer();
    this.retry();
  }

  // ---------------------------------------------------------------- socket

  wsUrl() {
    const url = new URL('ws/live', this.base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams({ since: String(this.position.seq ?? 0) });
    if (this.position.epoch) q.set('epoch', this.position.epoch);
    for (const [k, v] of this.params()) q.append(k, v);
    url.search = `?${q}`;
    return url.toString();
  }

  connect() {
    this.cancelTimer();
    this.drop();
    this.buffer = null;
    if (!this.go(State.CONNECTING, 'connect')) return;
    const gen = this.gen;
    let sock;
    try {
      // The token travels as a subprotocol, never in the URL (URLs end up in logs).
      sock = new WebSocket(this.wsUrl(), ['bearer', this.token]);
    } catch (err) {
      this.scheduleReconnect(`could not open a WebSocket: ${err.message}`);
      return;
    }
    this.ws = sock;
    this.lastFrameAt = Date.now();
    this.pingSentAt = 0;
    sock.onmessage = (ev) => { if (gen === this.gen) this.onFrame(ev.data, gen); };
    sock.onclose = (ev) => { if (gen === this.gen) this.onClose(ev.code, ev.reason); };
    sock.onerror = () => { /* onclose follows with the code */ };
  }

  drop() {
    this.gen += 1;
    const old = this.ws;
    this.ws = null;
    if (old) {
      old.onmessage = null; old.onclose = null; old.onerror = null;
      try { old.close(1000, 'client reconnecting'); } catch { /* already closed */ }
    }
  }

  onClose(code, reason) {
    this.ws = null;
    this.stats.lastCloseCode = code;
    this.stats.closeCodes.push(code);
    if (this.stats.closeCodes.length > CLOSE_CODES_KEPT) this.stats.closeCodes.shift();
    const stop = STOP_CODES[code];
    if (stop) {
      this.halt(stop, { code, reason });
      return;
    }
    if (RELOAD_CODES.has(code)) this.needReload = true;
    this.scheduleReconnect(`closed ${code}${reason ? `: ${reason}` : ''}`, { code, reason });
  }

  onFrame(raw, gen) {
    this.lastFrameAt = Date.now();
    this.pingSentAt = 0;
    let f;
    try { f = JSON.parse(raw); } catch { console.warn('zepix: ignoring a frame that is not JSON'); return; }
    if (!f || typeof f !== 'object') return;
    switch (f.type) {
      case 'event':
        if (this.state === State.RELOADING) { this.buffer.push(f); return; }
        this.apply(f);
        return;
      case 'welcome':
        this.stats.session = f.session;
        this.stats.expiresAt = f.expires_at || null;
        this.heartbeatMs = Math.max(1000, (Number(f.heartbeat_s) || 5) * 1000);
        this.hooks.onWelcome?.(f);
        return;
      case 'replayed':
        this.onReplayed(f, gen);
        return;
      case 'error':
        console.warn(`zepix: hub says ${f.code}: ${f.message}`);
        return;
      default:
        return;  // pong, topics, refreshed
    }
  }

  apply(f) {
    if (!isNew(this.position.seq, f)) { this.stats.ignored += 1; return; }
    this.hooks.onEvent?.(f);
    if (f.seq !== null && f.seq !== undefined) this.position.seq = f.seq;
    this.stats.applied += 1;
  }

  onReplayed(f, gen) {
    this.attempt = 0;
    this.stats.connects += 1;
    const wasLive = this.everLive;
    this.everLive = true;
    if (f.recovered === false) {
      this.stats.reloads += 1;
      this.reloadAfterGap(gen, f.reason || 'gap too large');
      return;
    }
    if (typeof f.head === 'number' && this.position.seq !== null && f.head > this.position.seq) {
      // Nothing on our topics up to head is left to send; adopting it keeps the next resume short.
      this.position.seq = f.head;
    }
    const n = f.count || 0;
    this.stats.lastMissed = n;
    if (wasLive) this.stats.resumes += 1;
    this.go(State.LIVE, 'replayed', { resumed: wasLive, count: n });
  }

  // recovered=false: the gap cannot be replayed. Reload, then apply the held-back live frames above its head.
  async reloadAfterGap(gen, why) {
    this.buffer = [];
    this.go(State.RELOADING, 'gap', { reason: why });
    let snap;
    try {
      snap = await this.fetchSnapshot();
    } catch (err) {
      if (gen !== this.gen) return;
      this.buffer = null;
      this.drop();
      this.failed(err, 'could not reload state');
      return;
    }
    if (gen !== this.gen) return;
    this.adopt(snap, false);
    const held = this.buffer || [];
    this.buffer = null;
    for (const f of held) this.apply(f);
    // A socket lost meanwhile already moved us to BACKOFF; the reconnect resumes from this snapshot's head.
    if (this.state === State.RELOADING) this.go(State.LIVE, 'reloaded', { reloaded: true, reason: why });
  }

  // ---------------------------------------------------------------- snapshot

  async fetchSnapshot() {
    const url = new URL('api/snapshot', this.base);
    const q = this.params().toString();
    if (q) url.search = `?${q}`;
    // A stalled request would leave the page loading for good: give up and retry.
    const r = await fetch(url, {
      headers: { Authorization: `Bearer ${this.token}` }, cache: 'no-store',
      signal: AbortSignal.timeout(SNAPSHOT_TIMEOUT_MS),
    });
    if (r.status === 401 || r.status === 403 || r.status === 422) {
      let detail = '';
      try { detail = (await r.json()).detail || ''; } catch { /* no body */ }
      if (typeof detail !== 'string') detail = JSON.stringify(detail);
      const Failure = r.status === 422 ? FilterRefused : AuthFailure;
      throw new Failure(detail || `HTTP ${r.status}`);
    }
    if (!r.ok) throw new Error(`snapshot: HTTP ${r.status}`);
    return r.json();
  }

  adopt(snap, replace) {
    const epoch = typeof snap.epoch === 'string' ? snap.epoch : null;
    const previous = { ...this.position };
    // The log went backwards or is another one (a restored or new database), or the view changed (replace):
    // what the caller holds no longer lines up with this snapshot.
    const replaced = replace || (previous.seq !== null && (snap.head < previous.seq || epoch !== previous.epoch));
    this.hooks.onSnapshot?.(snap, { first: previous.seq === null, replaced, previous });
    this.position = { seq: snap.head, epoch };
  }

  // ---------------------------------------------------------------- failures and retries

  failed(err, what) {
    if (err instanceof AuthFailure) {
      this.halt('unauthorized', { reason: err.message, http: true });
    } else if (err instanceof FilterRefused) {
      this.halt('refused', { reason: err.message, http: true });
    } else {
      this.needReload = true;
      this.scheduleReconnect(`${what}: ${err.message}`);
    }
  }

  halt(why, info) {
    this.starts += 1;
    this.cancelTimer();
    this.drop();
    this.go(State.STOPPED, why, { why, ...info });
  }

  scheduleReconnect(why, info = {}) {
    this.cancelTimer();
    this.attempt += 1;
    if (this.everLive) this.stats.reconnects += 1;
    const delay = backoffDelay(this.attempt, this.random);
    if (!this.go(State.BACKOFF, 'retry', { reason: why, delay, ...info })) return;
    this.timer = setTimeout(() => { this.timer = null; this.retry(); }, delay);
  }

  retry() {
    if (this.needReload || this.position.seq === null) this.start();
    else this.connect();
  }

  // A cleared timer must read as "none pending": hurry() tests it to know a reconnect is waiting.
  cancelTimer() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  // Half-open TCP (a laptop that slept, a dead proxy) shows as silence: probe, then give up and reconnect.
  startWatchdog() {
    if (this.watch === null) this.watch = setInterval(() => this.watchdog(), 1000);
  }

  watchdog() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const silent = Date.now() - this.lastFrameAt;
    const probeAfter = Math.max(4000, this.heartbeatMs * 3);
    if (silent > probeAfter && !this.pingSentAt) {
      this.pingSentAt = Date.now();
      try { ws.send('{"type":"ping"}'); } catch { /* close follows */ }
    } else if (this.pingSentAt && Date.now() - this.pingSentAt > Math.max(5000, this.heartbeatMs * 2)) {
      this.drop();
      this.scheduleReconnect('no answer from the hub');
    }
  }
}
