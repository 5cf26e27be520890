// pere.js: PERE's browser client, a plain ES module with no dependencies.
//
//   import { subscribe } from '/pere.js';
//   const sub = subscribe({
//     channel: 'CHANNEL_1',
//     device: 'W0039123456789',
//     onEvent(event) { show(event); sub.ack(event.id).then(...) },
//     onState(state) { badge.textContent = state },
//     onGap(gap) { warn(`events were lost: ${gap.from} … ${gap.oldest}`) },
//   });
//
// `subscribe` wraps EventSource (docs/PROTOCOL.md §3): the device goes in the
// `device` query parameter because EventSource cannot set headers, and
// several channels use `/feed?channel=a&channel=b`. `ack` sends a receipt
// (docs/PROTOCOL.md §4) the way PERE's original page did: `POST /feedback/:channel`
// with headers `device` and `Last-Event-ID` and the form body `status=ok`,
// or a JSON body `{"id","status"}`. A subscription's `ack` coalesces: the
// receipts it is asked for while one of its requests is in flight go
// together in one batch (§4.1) when that request returns, so a burst of
// events costs a few receipt requests, not one each.

/** Connection states reported to `onState`. */
export const State = Object.freeze({
  CONNECTING: 'connecting',
  OPEN: 'open',
  RECONNECTING: 'reconnecting',
  CLOSED: 'closed',
});

/** A device id as docs/PROTOCOL.md §1 allows it. */
export const DEVICE_RE = /^[A-Za-z0-9_\-.:@]{1,128}$/;

/** A channel or pattern as docs/PROTOCOL.md §1 allows it (roughly: `*` segments). */
export const CHANNEL_RE = /^[A-Za-z0-9_\-.:*]{1,200}$/;

/** Longest wait between two reconnect attempts made by this module, in ms. */
const MAX_BACKOFF_MS = 30_000;

/** Event ids remembered as processed per device; the oldest are forgotten first. */
const MAX_PROCESSED = 10_000;

/**
 * Most receipts in one batch request: a burst of thousands of events still
 * takes only a few requests, far from the server's 10,000 items
 * (docs/PROTOCOL.md §4.1), and the answer to one batch is a small read.
 */
const MAX_BATCH_ITEMS = 500;

/**
 * Most characters of JSON in one batch body. A UTF-16 unit is at most 3
 * bytes of UTF-8, so a batch stays under 768 KiB, within the server's 1 MiB
 * for a receipt body even when every status is long (1,024 bytes at most).
 */
const MAX_BATCH_CHARS = 256 * 1024;

/**
 * The status of a batch item's error: the answer gives each failed item
 * its code only (docs/PROTOCOL.md §4.1), and §8.1 gives the code's status,
 * which says whether trying again may help (`PereError.transient`). Codes
 * not listed are 400s.
 */
const ITEM_ERROR_STATUS = Object.freeze({
  unauthorized: 401,
  forbidden: 403,
  unknown_event: 404,
  not_a_recipient: 409,
  internal: 500,
  shutting_down: 503,
  store_unavailable: 503,
  over_capacity: 503,
});

// Events this page processed, per server and device: id → the status of the
// receipt the page sent for it (null until it sends one). docs/PROTOCOL.md §5: a
// device that comes back without Last-Event-ID is sent again every event it
// has not acknowledged, with the same id; a page that closes a subscription
// and opens another for the same device (or whose receipt was lost) sees
// such events twice. They are processed once per page lifetime, and their
// receipt is sent again with the status the page used.
const processed = new Map();

function processedBy(base, device) {
  const key = `${base}\u0000${device || ''}`;
  let ids = processed.get(key);
  if (!ids) {
    ids = new Map();
    processed.set(key, ids);
  }
  return ids;
}

function remember(ids, id, status) {
  ids.delete(id); // re-inserted last: the newest are kept
  ids.set(id, status);
  if (ids.size > MAX_PROCESSED) ids.delete(ids.keys().next().value);
}

/** An error answer of the server (docs/PROTOCOL.md §8), or a network failure (status 0). */
export class PereError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'PereError';
    this.status = status;
    this.code = code;
  }

  /** Worth trying again later: network failure, 408, 429 or 5xx. */
  get transient() {
    return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

/** A new device id shaped like PERE's web page made them: `W0039` + 9 digits. */
export function newDeviceId() {
  const digits = new Uint8Array(9);
  crypto.getRandomValues(digits);
  return 'W0039' + Array.from(digits, (d) => d % 10).join('');
}

/** `text` parsed as JSON when it is a JSON object or array, else `undefined`. */
export function parseJson(text) {
  const t = typeof text === 'string' ? text.trimStart() : '';
  if (!t.startsWith('{') && !t.startsWith('[')) return undefined;
  try {
    return JSON.parse(t);
  } catch {
    return undefined;
  }
}

/**
 * The URL of an event stream.
 * @param {object} o
 * @param {string[]} o.channels channels or patterns (at least one)
 * @param {string} [o.device] the device id
 * @param {string} [o.base] server origin, e.g. `http://127.0.0.1:8080` (default: this page's)
 * @param {string} [o.lastEventId] resume after this id
 * @param {boolean} [o.replay] replay every retained event (`replay=all`)
 * @param {string} [o.accessToken] a token, sent as `access_token`
 */
export function feedUrl({ channels, device, base = '', lastEventId, replay, accessToken, envelope }) {
  if (!channels || channels.length === 0) throw new TypeError('feedUrl: name at least one channel');
  const query = new URLSearchParams();
  let path = '/feed';
  if (channels.length === 1) {
    path += '/' + encodeURIComponent(channels[0]);
  } else {
    for (const c of channels) query.append('channel', c);
  }
  if (device) query.set('device', device);
  if (lastEventId) query.set('lastEventId', lastEventId);
  if (replay) query.set('replay', 'all');
  if (envelope) query.set('envelope', 'json');
  if (accessToken) query.set('access_token', accessToken);
  const q = query.toString();
  return base + path + (q ? '?' + q : '');
}

async function errorOf(response) {
  const text = await response.text().catch(() => '');
  const body = parseJson(text);
  const message = (body && body.error) || text || `${response.status} ${response.statusText}`;
  return new PereError(response.status, body && body.code, message);
}

/**
 * `GET path` as JSON; throws a `PereError` for an error answer or a network failure.
 * @param {string} path e.g. `/admin/channels`
 * @param {{base?: string, accessToken?: string, signal?: AbortSignal}} [options]
 */
export async function getJson(path, options = {}) {
  return requestJson('GET', path, options);
}

/**
 * `METHOD path` (e.g. `DELETE /admin/devices/:channel/:device`), the answer
 * as JSON; throws a `PereError` for an error answer or a network failure.
 * @param {string} method
 * @param {string} path
 * @param {{base?: string, accessToken?: string, signal?: AbortSignal}} [options]
 */
export async function requestJson(method, path, { base = '', accessToken, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (accessToken) headers.Authorization = 'Bearer ' + accessToken;
  let response;
  try {
    response = await fetch(base + path, { method, headers, signal, cache: 'no-store' });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new PereError(0, 'network', `cannot reach the server (${err && err.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/**
 * The URL of a channel's receipts stream (`GET /receipts/:channel`, SSE):
 * `receipt` events for every change of a receipt, `overdue` notices.
 * @param {string} channel
 * @param {{base?: string, accessToken?: string}} [options]
 */
export function receiptsUrl(channel, { base = '', accessToken } = {}) {
  const query = accessToken ? '?access_token=' + encodeURIComponent(accessToken) : '';
  return `${base}/receipts/${encodeURIComponent(channel)}${query}`;
}

/**
 * Sends a receipt for event `id`: `POST /feedback/:channel`, one request
 * per call (a subscription's `ack` coalesces receipts into batches).
 * Resolves to the server's answer `{"id","device","state"}`; rejects with a
 * `PereError` (404 `unknown_event` when the event is not, or no longer,
 * retained on that channel).
 * @param {string} channel the channel (or the subscription pattern) of the event
 * @param {string} device the device acknowledging
 * @param {string} id the event id (`event.lastEventId`)
 * @param {string} [status] free text, `ok` by default
 * @param {{base?: string, json?: boolean, accessToken?: string, signal?: AbortSignal}} [options]
 *   `json: true` sends `{"id","status"}` instead of PERE's form body `status=…`
 */
export async function ack(channel, device, id, status = 'ok', options = {}) {
  // Remembered before it is sent: if this receipt is lost, the event comes
  // again and the receipt is sent again with the same status.
  remember(processedBy(options.base || '', device), id, status);
  return postReceipt(channel, device, id, status, options);
}

/** `POST /feedback/:channel` of one receipt, as `ack` describes it. */
async function postReceipt(channel, device, id, status, { base = '', json = false, accessToken, signal } = {}) {
  const headers = { device, 'Last-Event-ID': id };
  let body;
  if (json) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify({ id, status });
  } else {
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams({ status }).toString();
  }
  if (accessToken) headers.Authorization = 'Bearer ' + accessToken;
  let response;
  try {
    response = await fetch(`${base}/feedback/${encodeURIComponent(channel)}`, {
      method: 'POST',
      headers,
      body,
      signal,
      cache: 'no-store',
    });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    throw new PereError(0, 'network', `cannot reach the server (${err && err.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/**
 * `POST /feedback/:channel` of a batch (docs/PROTOCOL.md §4.1): `receipts`
 * are `{json}` items, each `{"id","status"}` as JSON text. Resolves to the
 * answer, one result per receipt in order; rejects with a `PereError` when
 * the request as a whole failed.
 */
async function postBatch(channel, device, receipts, { base = '', accessToken } = {}) {
  const headers = { device, 'Content-Type': 'application/json' };
  if (accessToken) headers.Authorization = 'Bearer ' + accessToken;
  let response;
  try {
    response = await fetch(`${base}/feedback/${encodeURIComponent(channel)}`, {
      method: 'POST',
      headers,
      body: '[' + receipts.map((r) => r.json).join(',') + ']',
      cache: 'no-store',
    });
  } catch (err) {
    throw new PereError(0, 'network', `cannot reach the server (${err && err.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  const results = await response.json().catch(() => null);
  if (!Array.isArray(results) || results.length !== receipts.length) {
    throw new PereError(response.status, 'invalid_answer', 'the answer to a batch of receipts is not one result per receipt');
  }
  return results;
}

/**
 * Coalesces the receipts of one device on one channel (of one server, sent
 * with one token), in the manner of Nagle's algorithm: with no request of
 * theirs in flight, a receipt goes at once (at the end of the current task,
 * so receipts asked for together go together); those asked for while a
 * request is in flight wait for it, then go as one batch (docs/PROTOCOL.md
 * §4.1), at most `MAX_BATCH_ITEMS` at a time. A lone receipt is never
 * delayed, and a burst costs a few requests instead of one per event. One
 * request at a time also leaves the browser's other connections to the
 * origin (six over HTTP/1.1, one held by the event stream) free.
 *
 * Each receipt's promise settles with its own item of the answer: an item
 * the server refused (e.g. `unknown_event`) rejects only its promise, with a
 * `PereError` of the item's code; a request that failed as a whole (network,
 * 503…) rejects every receipt in it. A receipt alone in its request is sent
 * as `ack` sends it (PERE's form body, or `{"id","status"}`), not as a batch.
 */
class ReceiptBatcher {
  #channel;
  #device;
  #options;
  /** Called when the queue is empty and nothing is in flight: the owner forgets this batcher. */
  #onIdle;
  /** Receipts not sent yet, oldest first: `{id, status, json, resolve, reject}`. */
  #queue = [];
  /** A send is scheduled or a request in flight: receipts wait in `#queue`. */
  #busy = false;

  constructor(channel, device, options, onIdle) {
    this.#channel = channel;
    this.#device = device;
    this.#options = options;
    this.#onIdle = onIdle;
  }

  /** Queues a receipt; resolves to its answer `{"id","device","state"}`. */
  add(id, status) {
    return new Promise((resolve, reject) => {
      this.#queue.push({ id, status, json: JSON.stringify({ id, status }), resolve, reject });
      if (!this.#busy) {
        this.#busy = true;
        queueMicrotask(() => this.#drain());
      }
    });
  }

  async #drain() {
    while (this.#queue.length > 0) await this.#send(this.#take());
    this.#busy = false;
    this.#onIdle();
  }

  /** Takes the oldest receipts that fit one request (at least one). */
  #take() {
    let n = 0;
    let chars = 2; // `[` and `]`
    while (n < this.#queue.length && n < MAX_BATCH_ITEMS) {
      chars += this.#queue[n].json.length + 1;
      if (n > 0 && chars > MAX_BATCH_CHARS) break;
      n += 1;
    }
    return this.#queue.splice(0, n);
  }

  /** Sends `receipts` and settles each one's promise; never rejects. */
  async #send(receipts) {
    if (receipts.length === 1) {
      const [r] = receipts;
      return postReceipt(this.#channel, this.#device, r.id, r.status, this.#options).then(r.resolve, r.reject);
    }
    let results;
    try {
      results = await postBatch(this.#channel, this.#device, receipts, this.#options);
    } catch (err) {
      for (const r of receipts) r.reject(err);
      return;
    }
    receipts.forEach((r, i) => {
      const item = results[i];
      if (item && typeof item.error !== 'string') {
        r.resolve(item);
      } else {
        const code = (item && item.code) || 'invalid_answer';
        r.reject(new PereError(ITEM_ERROR_STATUS[code] ?? 400, code, (item && item.error) || 'no result for this receipt'));
      }
    });
  }
}

// The batchers with receipts queued or in flight, by server, channel,
// device, token and body form; each forgets itself once idle, so a pattern
// that acks on many channels keeps none for channels gone quiet.
const batchers = new Map();

/** Queues a receipt with the batcher of its channel and device (made on first use). */
function queueReceipt(channel, device, id, status, options) {
  const key = [options.base || '', channel, device, options.accessToken || '', options.json ? 'json' : 'form'].join('\u0000');
  let batcher = batchers.get(key);
  if (!batcher) {
    batcher = new ReceiptBatcher(channel, device, options, () => batchers.delete(key));
    batchers.set(key, batcher);
  }
  return batcher.add(id, status);
}

/**
 * Subscribes to one or more channels and keeps the subscription alive.
 *
 * @param {object} o
 * @param {string} [o.channel] one channel or pattern…
 * @param {string[]} [o.channels] …or several
 * @param {string} [o.device] the device id (without one the stream is anonymous and cannot ack,
 *   unless `accessToken` names the device: its subject is then taken from `pere.hello`)
 * @param {string} [o.base] server origin (default: this page's)
 * @param {string[]} [o.events] named event types to listen to besides `message`
 *   (EventSource only dispatches named events to listeners registered by name)
 * @param {string} [o.lastEventId] resume after this id on the first connection
 * @param {boolean} [o.replay] ask for every retained event on the first connection
 * @param {string} [o.accessToken] a token (docs/PROTOCOL.md §7)
 * @param {boolean} [o.json] send receipts as JSON instead of PERE's form body
 * @param {boolean} [o.envelope] ask for `?envelope=json` (default: for a pattern or several channels)
 * @param {number} [o.retryMs] first delay before this module reconnects itself (default 3000)
 * @param {(event: PereEvent) => void} [o.onEvent] every event that has an id
 * @param {(state: string, info: {error?: PereError}) => void} [o.onState]
 * @param {(hello: object) => void} [o.onHello] `pere.hello`: device, channels, resumed_from, replayed
 * @param {(gap: {from: string, oldest: string|null}) => void} [o.onGap] `pere.gap`
 * @param {(error: PereError) => void} [o.onError] the server refused the stream
 *
 * `PereEvent` is `{id, type, channel, data, json, receivedAt}`: `channel`
 * is the channel the event was published on (a pattern's or several
 * channels' streams ask for `?envelope=json` to learn it; pass
 * `envelope: false` to keep PERE's plain stream), `json` is the payload
 * parsed when it is a JSON object or array.
 *
 * An event whose id this page already processed for the device (the server
 * sends unacknowledged events again when a device comes back without
 * Last-Event-ID, docs/PROTOCOL.md §5) is not passed to `onEvent` again; if the page
 * sent a receipt for it, the receipt is sent again with the same status
 * (the first one may have been lost).
 *
 * The returned subscription has `state`, `lastEventId`, `channels`,
 * `device`, `ack(id, status?)` and `close()`. Its receipts are coalesced
 * (see `Subscription.ack`).
 */
export function subscribe(o) {
  return new Subscription(o);
}

class Subscription {
  #o;
  #source = null;
  #timer = null;
  #failures = 0;
  #closed = false;
  #resume;
  #envelope;
  /** Event id → its channel, for receipts (from the envelope). */
  #channelOf = new Map();
  /** No device given: it is whatever `pere.hello` says (a token's subject). */
  #learnsDevice = false;

  constructor(o) {
    const channels = o.channels ? [...o.channels] : o.channel ? [o.channel] : [];
    if (channels.length === 0) throw new TypeError('subscribe: name a channel');
    this.#o = { retryMs: 3000, base: '', events: [], ...o };
    this.channels = channels;
    this.device = o.device || null;
    this.#learnsDevice = !o.device;
    this.state = null; // the first #setState reports `connecting`
    this.lastEventId = o.lastEventId || '';
    this.#resume = { lastEventId: o.lastEventId, replay: o.replay };
    // Events of a pattern or of several channels come wrapped with their
    // channel (docs/PROTOCOL.md §3.8); one plain channel stays as PERE's page
    // read it.
    this.#envelope = o.envelope ?? (channels.length > 1 || channels.some((c) => c.includes('*')));
    this.#connect();
  }

  /** Closes the stream for good. */
  close() {
    this.#closed = true;
    clearTimeout(this.#timer);
    if (this.#source) this.#source.close();
    this.#source = null;
    this.#setState(State.CLOSED, {});
  }

  /**
   * Acknowledges event `id` for this subscription's device, on the event's
   * own channel when the stream said it (envelope); else each subscription
   * is tried in turn until one knows the event.
   *
   * Receipts are coalesced per channel: sent at once when none of this
   * device's receipts on that channel is in flight, else gathered and sent
   * as one batch (docs/PROTOCOL.md §4.1) when the request in flight returns.
   * The promise still settles with this receipt's own result: the server's
   * `{"id","device","state"}`, or a `PereError` (for this item alone, e.g.
   * `unknown_event`, or for the whole request, e.g. `network`).
   */
  async ack(id, status = 'ok') {
    if (!this.device) throw new PereError(400, 'missing_device', 'an anonymous stream cannot send receipts');
    // Remembered before it is sent, as `ack` does: a lost receipt is sent
    // again with this status when the event comes again.
    remember(processedBy(this.#o.base, this.device), id, status);
    const options = { base: this.#o.base, json: this.#o.json, accessToken: this.#o.accessToken };
    const known = this.#channelOf.get(id);
    if (known) return queueReceipt(known, this.device, id, status, options);
    let last;
    for (const channel of this.channels) {
      try {
        return await queueReceipt(channel, this.device, id, status, options);
      } catch (err) {
        if (!(err instanceof PereError) || err.code !== 'unknown_event') throw err;
        last = err;
      }
    }
    throw last;
  }

  #setState(state, info) {
    if (state === this.state && !info.error) return;
    this.state = state;
    if (this.#o.onState) this.#o.onState(state, info);
  }

  #url() {
    return feedUrl({
      channels: this.channels,
      device: this.#learnsDevice ? undefined : this.device,
      base: this.#o.base,
      accessToken: this.#o.accessToken,
      // The first connection honours the caller's resume point; later ones
      // made by this module resume after the last event seen (EventSource's
      // own reconnects send Last-Event-ID by themselves).
      lastEventId: this.lastEventId || this.#resume.lastEventId,
      replay: !this.lastEventId && this.#resume.replay,
      envelope: this.#envelope,
    });
  }

  #connect() {
    if (this.#closed) return;
    const source = new EventSource(this.#url());
    this.#source = source;
    this.#setState(this.#failures === 0 && !this.lastEventId ? State.CONNECTING : State.RECONNECTING, {});

    // The stream is open once `pere.hello` arrives, not at `onopen`: a
    // server that cannot serve it now answers 200 with a `retry:` and
    // ends it at once, to be asked again (docs/PROTOCOL.md §6.5).
    // An event the server named `open` or `error` (only `pere.` is
    // reserved) reaches `onerror` too, as a MessageEvent: it is data,
    // not news of the connection.
    source.onerror = (e) => {
      if (source !== this.#source || this.#closed || e instanceof MessageEvent) return;
      if (source.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself after `retry` ms, with Last-Event-ID.
        this.#setState(State.RECONNECTING, {});
      } else {
        // EventSource gives up on a non-200 answer: find out why.
        source.close();
        this.#source = null;
        this.#diagnose();
      }
    };

    const onData = (e) => {
      // A listener for a type named `error` or `open` also hears the
      // connection's own events of that name, which carry no data.
      if (source !== this.#source || !(e instanceof MessageEvent)) return;
      if (e.lastEventId) this.lastEventId = e.lastEventId;
      if (e.lastEventId) {
        const ids = processedBy(this.#o.base, this.device);
        if (ids.has(e.lastEventId)) {
          const status = ids.get(e.lastEventId);
          if (status !== null && this.device) this.ack(e.lastEventId, status).catch(() => {});
          return;
        }
        remember(ids, e.lastEventId, null);
      }
      let data = e.data;
      let channel = this.channels.length === 1 && !this.channels[0].includes('*') ? this.channels[0] : null;
      const wrapped = this.#envelope ? parseJson(e.data) : null;
      if (wrapped && typeof wrapped.channel === 'string' && typeof wrapped.data === 'string') {
        // As a plain stream reads it: SSE carries no CR (docs/PROTOCOL.md §3).
        data = wrapped.data.replace(/\r\n?/g, '\n');
        channel = wrapped.channel;
        if (e.lastEventId) {
          this.#channelOf.set(e.lastEventId, channel);
          // Bounded like the processed ids: the oldest go first.
          if (this.#channelOf.size > 10_000) this.#channelOf.delete(this.#channelOf.keys().next().value);
        }
      }
      if (this.#o.onEvent) {
        this.#o.onEvent({
          id: e.lastEventId,
          type: e.type,
          channel,
          data,
          json: parseJson(data),
          receivedAt: new Date(),
        });
      }
    };
    source.addEventListener('message', onData);
    for (const type of this.#o.events) {
      if (type && type !== 'message' && !type.startsWith('pere.')) source.addEventListener(type, onData);
    }
    source.addEventListener('pere.hello', (e) => {
      if (source !== this.#source) return;
      // The stream is live once hello is sent (docs/PROTOCOL.md §3).
      this.#failures = 0;
      this.#setState(State.OPEN, {});
      const hello = parseJson(e.data);
      // With a token and no device of its own, the device is the token's
      // subject (docs/PROTOCOL.md §1.3), as the server says here: receipts
      // name it. Reconnects name none, so a subject changed at run time is
      // taken, not refused.
      if (hello && this.#learnsDevice && typeof hello.device === 'string') this.device = hello.device;
      if (hello && this.#o.onHello) this.#o.onHello(hello);
    });
    source.addEventListener('pere.gap', (e) => {
      if (source !== this.#source) return;
      const gap = parseJson(e.data);
      if (gap && this.#o.onGap) this.#o.onGap(gap);
    });
  }

  // EventSource does not say why it failed. Ask once with fetch, reading only
  // the status and error body: a 4xx (bad name, no token…) is final; anything
  // else (503 while the server restarts, 429, network down) is retried with
  // exponential backoff, resuming after the last event seen.
  async #diagnose() {
    const controller = new AbortController();
    let error;
    try {
      const response = await fetch(this.#url(), {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: controller.signal,
      });
      if (response.ok) {
        controller.abort();
        error = new PereError(0, 'stream_failed', 'the stream failed; retrying');
      } else {
        error = await errorOf(response);
      }
    } catch (err) {
      error = new PereError(0, 'network', `cannot reach the server (${err && err.message})`);
    }
    if (this.#closed) return;
    if (!error.transient) {
      this.#closed = true;
      this.#setState(State.CLOSED, { error });
      if (this.#o.onError) this.#o.onError(error);
      return;
    }
    this.#failures += 1;
    const delay = Math.min(this.#o.retryMs * 2 ** (this.#failures - 1), MAX_BACKOFF_MS);
    this.#setState(State.RECONNECTING, { error, retryInMs: delay });
    this.#timer = setTimeout(() => this.#connect(), delay * (0.8 + Math.random() * 0.4));
  }
}
