/**
 * A subscription: one member of a consumer group reading the event stream and the group's retry
 * stream, the settle commands of its deliveries, the mover of the group's due retries, and the
 * trimming of the stream.
 */
import { randomUUID } from 'node:crypto';
import {
  backoffDelay,
  type Delivery,
  describeError,
  type Logger,
  SlotGate,
  type SubscriptionSpec,
  TickCoalescer,
  type TransportSubscription,
} from '@busbar/core/transport';
import type { Redis } from 'ioredis';
import { type Connections, messageOf, quit, withDeadline } from './connection.js';
import { type Entry, parseRead, type ReadReply, RedisDelivery, type Settler } from './delivery.js';
import type { ResolvedSettings } from './options.js';
import { ACK_DELETE, CLAIM_OWN, DEAD_LETTER, DROP_CONSUMER, MOVE, RETRY, TRIM_ACKED } from './scripts.js';
import type { GroupKeys } from './topology.js';
import { BodyCopier, decodeFields, encodeFields } from './wire.js';

/** Idle time given to a released entry so that any member's next `XAUTOCLAIM` takes it (one year). */
const RELEASED_IDLE_MS = 365 * 24 * 3_600_000;
/** Most delayed retries moved by one run of the mover script. */
const MOVE_BATCH = 100;

/** `command`, or a rejection after `timeoutMs` (the command itself is left to settle on its own). */
function bounded<T>(command: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  command.catch(() => {});
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    command,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no reply to ${what} within ${timeoutMs} ms`)), timeoutMs);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** @internal */
export interface SubscriptionOptions {
  readonly connections: Connections;
  /** The command connection (for `XACK` of deleted entries and `CLIENT UNBLOCK`). */
  readonly client: Redis;
  readonly settings: ResolvedSettings;
  readonly spec: SubscriptionSpec;
  readonly keys: GroupKeys;
  readonly consumer: string;
  readonly logger: Logger;
  readonly onDelivery: (delivery: Delivery) => void;
  readonly onClosed: (sub: RedisStreamSubscription) => void;
}

/**
 * @internal One group member: a read loop on a dedicated connection (own pending entries first,
 * then claims of idle entries, then new entries of the event stream and the group's retry stream),
 * plus the mover of the group's due retries.
 */
export class RedisStreamSubscription implements TransportSubscription {
  private readonly conn: Redis;
  /** Deliveries handed to core whose outcome Redis has not recorded yet (handled, or being settled). */
  private readonly inFlight = new Map<string, RedisDelivery>();
  /** Deliveries handed to core and not settled by it yet: what `concurrency` limits. */
  private readonly handling: SlotGate;
  private readonly bodies = new BodyCopier();
  private readonly streamAcks: TickCoalescer<RedisDelivery>;
  private readonly retryAcks: TickCoalescer<RedisDelivery>;
  private readonly buffer: Entry[] = [];
  /** Entries settled while a read of pending entries is in flight (its reply may predate the settle). */
  private settledDuring: Set<string> | undefined;
  private readonly streams: readonly string[];
  private clientId: string | undefined;
  private blocked = false;
  private stopping = false;
  private closed = false;
  private loop: Promise<void> = Promise.resolve();
  private stopped: Promise<void> | undefined;
  private waiter: (() => void) | undefined;
  private needPending = true;
  private readonly pendingCursor = new Map<string, string>();
  private readonly claimCursor = new Map<string, string>();
  private nextClaimAt = 0;
  private moveTimer: NodeJS.Timeout | undefined;
  private moveAt = Number.POSITIVE_INFINITY;
  private trimTimer: NodeJS.Timeout | undefined;
  /** What the deliveries of this subscription call to settle (one object, not closures per delivery). */
  private readonly settler: Settler = {
    ack: (d) => this.ack(d),
    retry: (d, delayMs, headers) => this.retry(d, delayMs, headers),
    deadLetter: (d, headers) => this.deadLetter(d, headers),
    release: (d) => this.release(d),
    extendLease: (d, ms) => this.extendLease(d, ms),
  };

  constructor(private readonly o: SubscriptionOptions) {
    this.streams = [o.keys.retry, o.keys.stream];
    this.handling = new SlotGate(o.spec.concurrency);
    // One XACK per stream for what core settled during one event-loop turn (after its I/O callbacks).
    this.streamAcks = new TickCoalescer((ds) => this.flushAcks(o.keys.stream, ds));
    this.retryAcks = new TickCoalescer((ds) => this.flushAcks(o.keys.retry, ds));
    this.conn = o.connections.open({
      enableOfflineQueue: true,
      // Commands in flight when the connection drops are sent again after the reconnect (without
      // it ioredis would leave their promises pending forever).
      autoResendUnfulfilledCommands: true,
      maxRetriesPerRequest: null,
      connectionName: `busbar:sub:${o.consumer}`,
    });
    // A read whose reply was lost still delivered its entries to this consumer's pending list:
    // read them again (id 0) once the connection is back.
    this.conn.on('close', () => {
      this.needPending = true;
      this.pendingCursor.clear();
    });
    this.conn.on('ready', () => {
      this.conn.call('CLIENT', 'ID').then(
        (id) => {
          this.clientId = String(id);
        },
        () => {},
      );
    });
  }

  /**
   * Runs a command of the read loop on the subscription's connection with a client-side deadline
   * (`extraMs` — the `BLOCK` of a blocking read — plus `healthCheck.timeoutMs`). A connection that
   * stays silent past it while claiming to be ready is dead (half-open): it is dropped and ioredis
   * reconnects and re-sends the command; the loop then re-reads its own pending entries (`close`).
   */
  private guarded<T>(command: Promise<T>, extraMs = 0): Promise<T> {
    const deadline = extraMs + this.o.settings.healthCheck.timeoutMs;
    return withDeadline(this.conn, command, deadline, () => {
      if (this.closed || this.conn.status !== 'ready') return;
      this.o.logger.warn(
        { group: this.group, stream: this.o.keys.stream, deadlineMs: deadline },
        'redis consumer connection is silent past the deadline; reconnecting',
      );
      this.conn.disconnect(true);
    });
  }

  private get group(): string {
    return this.o.spec.group;
  }

  /**
   * Creates the group on the event stream (at `$` or `0`) and on its retry stream (at `0`), opens
   * the consumer connection, then starts reading. A connection that drops meanwhile is waited for
   * (up to `subscribeTimeoutMs`) and the step resumes; every error is a `BusError`.
   */
  async start(): Promise<void> {
    const until = Date.now() + this.o.settings.subscribeTimeoutMs;
    const left = () => Math.max(0, until - Date.now());
    const from = this.o.spec.startFrom === 'earliest' ? '0' : '$';
    await this.resuming(`XGROUP CREATE ${this.group} on ${this.o.keys.stream}`, left, () => this.ensureGroups(from, left()));
    // One attempt from here; when it fails ioredis reconnects by itself (retryStrategy).
    this.conn.connect().catch(() => {});
    await this.resuming('opening the consumer connection', left, () => this.connReady(left()));
    this.loop = this.run();
    this.scheduleMove(0);
    const retention = this.o.settings.retention;
    if (retention.trim === 'acked') {
      this.trimTimer = setInterval(() => void this.trim(), retention.intervalMs ?? 10_000);
      this.trimTimer.unref();
    }
  }

  /**
   * Runs `step` until it succeeds; a retryable failure (the connection dropped) is tried again after
   * a backoff while time is `left`, else rejected as a `BusError` naming the endpoint and the cause.
   */
  private async resuming<T>(doing: string, left: () => number, step: () => Promise<T>): Promise<T> {
    for (let failures = 1; ; failures++) {
      try {
        return await step();
      } catch (error) {
        const e = this.o.connections.failure ?? this.o.connections.toBusError(error, doing);
        if (!e.retryable || left() <= 0 || this.stopping) throw e;
        this.o.logger.info(
          { group: this.group, stream: this.o.keys.stream, err: e.message },
          'redis dropped the connection during subscribe; resuming',
        );
        const { initialMs, maxMs } = this.o.settings.reconnect;
        await new Promise((r) => setTimeout(r, Math.min(left(), backoffDelay(failures, { initialMs, maxMs, minMs: initialMs }))));
      }
    }
  }

  /** Resolves once the consumer connection is ready; rejects when it ends or after `timeoutMs`. */
  private connReady(timeoutMs: number): Promise<void> {
    const conn = this.conn;
    if (conn.status === 'ready') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (error?: unknown) => {
        clearTimeout(timer);
        conn.off('ready', onReady);
        conn.off('end', onEnd);
        conn.off('error', onError);
        if (error === undefined) resolve();
        else reject(error);
      };
      const onReady = () => done();
      const onEnd = () => done(this.o.connections.failure ?? new Error('Connection is closed.'));
      let last = '';
      const onError = (error: unknown) => {
        last = `: ${messageOf(error)}`;
      };
      conn.on('error', onError);
      const timer = setTimeout(
        () => done(new Error(`the consumer connection was not ready within the subscribe timeout (${conn.status})${last}`)),
        timeoutMs,
      );
      conn.on('ready', onReady);
      conn.on('end', onEnd);
    });
  }

  /** `XGROUP CREATE … MKSTREAM` on both streams (`BUSYGROUP`: it exists and keeps its position), each bounded by `timeoutMs`. */
  private async ensureGroups(start: '$' | '0', timeoutMs = this.o.settings.subscribeTimeoutMs): Promise<void> {
    const client = await this.o.connections.whenReady(timeoutMs);
    const create = async (key: string, from: string) => {
      try {
        await bounded(client.call('XGROUP', 'CREATE', key, this.group, from, 'MKSTREAM'), timeoutMs, `XGROUP CREATE on ${key}`);
      } catch (error) {
        if (!(error instanceof Error && error.message.startsWith('BUSYGROUP'))) throw error;
      }
    };
    await create(this.o.keys.stream, start);
    await create(this.o.keys.retry, '0');
  }

  // ---------------------------------------------------------------- read loop

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      try {
        const free = this.freeSlots();
        if (free <= 0) {
          await this.waitForWake(60_000);
          continue;
        }
        if (this.buffer.length > 0) {
          for (const e of this.buffer.splice(0, free)) this.dispatch(e);
          continue;
        }
        let entries: Entry[];
        if (this.needPending) {
          this.settledDuring = new Set();
          entries = await this.readOwnPending(free);
          if (entries.length === 0) this.needPending = false;
        } else if (Date.now() >= this.nextClaimAt) {
          this.settledDuring = new Set();
          entries = await this.autoclaim(free);
        } else {
          entries = await this.readNew(free);
        }
        const settled = this.settledDuring;
        this.settledDuring = undefined;
        failures = 0;
        await this.accept(settled ? entries.filter((e) => !settled.has(this.slotOf(e))) : entries, free);
      } catch (error) {
        this.blocked = false;
        this.settledDuring = undefined;
        if (this.stopping) break;
        failures++;
        this.needPending = true;
        const text = describeError(error);
        this.o.logger.warn({ group: this.group, stream: this.o.keys.stream, err: text, failures }, 'redis read failed; retrying');
        if (this.o.connections.failure) {
          // Credentials or permissions refused: nothing reconnects; health() says why.
          this.o.logger.error(
            { group: this.group, stream: this.o.keys.stream, err: this.o.connections.failure.message },
            'redis refused the consumer; it stops',
          );
          return;
        }
        if (text.includes('NOGROUP')) await this.ensureGroups('0').catch(() => {});
        const { initialMs, maxMs } = this.o.settings.reconnect;
        await this.waitForWake(backoffDelay(failures + 1, { initialMs, maxMs, minMs: initialMs }));
      }
    }
  }

  /**
   * How many more entries may be handed over: `concurrency` less the deliveries core has not
   * settled yet. A settled delivery whose settle command is still on its way to Redis no longer
   * holds a slot (so the next read overlaps that command's round trip), but at most `concurrency`
   * of those may be outstanding as well.
   */
  private freeSlots(): number {
    const { concurrency } = this.o.spec;
    return Math.min(concurrency - this.handling.inFlight, 2 * concurrency - this.inFlight.size);
  }

  private waitForWake(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self.waiter === done) self.waiter = undefined;
        resolve();
      }
      this.waiter = done;
    });
  }

  private wake(): void {
    this.waiter?.();
  }

  /** Whether the entry of in-flight key `slot` is in flight or waiting in the buffer already. */
  private known(e: { stream: string; id: string }, slot: string): boolean {
    return this.inFlight.has(slot) || (this.buffer.length > 0 && this.buffer.some((b) => b.stream === e.stream && b.id === e.id));
  }

  /** Entries this consumer already owns (after a reconnect or a restart under a stable name), `XREADGROUP … 0`. */
  private async readOwnPending(count: number): Promise<Entry[]> {
    for (const stream of this.streams) {
      const cursor = this.pendingCursor.get(stream) ?? '0';
      const reply = (await this.guarded(
        this.conn.callBuffer('XREADGROUP', 'GROUP', this.group, this.o.consumer, 'COUNT', count, 'STREAMS', stream, cursor),
      )) as ReadReply;
      const entries = parseRead(reply, 0);
      const last = entries[entries.length - 1];
      if (!last) {
        this.pendingCursor.delete(stream);
        continue;
      }
      this.pendingCursor.set(stream, last.id);
      await this.fillDeliveryCounts(entries);
      return entries;
    }
    return [];
  }

  /** Entries idle for longer than `claimIdleMs` in any member's pending list, `XAUTOCLAIM`. */
  private async autoclaim(count: number): Promise<Entry[]> {
    const out: Entry[] = [];
    let complete = true;
    for (const stream of this.streams) {
      const cursor = this.claimCursor.get(stream) ?? '0-0';
      const reply = (await this.guarded(
        this.conn.callBuffer('XAUTOCLAIM', stream, this.group, this.o.consumer, this.o.settings.claimIdleMs, cursor, 'COUNT', count),
      )) as [Buffer, [Buffer, Buffer[] | null][], Buffer[]?];
      const next = reply[0].toString();
      this.claimCursor.set(stream, next);
      if (next !== '0-0') complete = false;
      for (const [id, fields] of reply[1]) out.push({ stream, id: id.toString(), fields, deliveryCount: 1 });
    }
    if (complete) this.nextClaimAt = Date.now() + this.o.settings.claimIntervalMs;
    if (out.length > 0) {
      await this.fillDeliveryCounts(out);
      this.o.logger.info({ group: this.group, stream: this.o.keys.stream, claimed: out.length }, 'claimed idle entries of the group');
    }
    return out;
  }

  /** New entries of the event stream and the group's retry stream, `XREADGROUP … BLOCK … > >`. */
  private async readNew(count: number): Promise<Entry[]> {
    const block = Math.max(1, Math.min(this.o.settings.blockMs, this.nextClaimAt - Date.now()));
    this.blocked = true;
    try {
      const reply = (await this.guarded(
        this.conn.callBuffer(
          'XREADGROUP',
          'GROUP',
          this.group,
          this.o.consumer,
          'COUNT',
          count,
          'BLOCK',
          block,
          'STREAMS',
          ...this.streams,
          '>',
          '>',
        ),
        block,
      )) as ReadReply;
      return parseRead(reply, 1);
    } finally {
      this.blocked = false;
    }
  }

  private async fillDeliveryCounts(entries: Entry[]): Promise<void> {
    const pipeline = this.conn.pipeline();
    for (const e of entries) pipeline.call('XPENDING', e.stream, this.group, e.id, e.id, 1);
    const replies = (await this.guarded(pipeline.exec())) ?? [];
    entries.forEach((e, i) => {
      const row = (replies[i]?.[1] as [string, string, number, number][] | undefined)?.[0];
      if (row) e.deliveryCount = Number(row[3]);
    });
  }

  /** Hands over up to `free` entries, keeps the rest for later; releases everything when stopping. */
  private async accept(entries: Entry[], free: number): Promise<void> {
    let slots = free;
    for (const e of entries) {
      const slot = this.slotOf(e);
      if (this.known(e, slot)) continue;
      if (e.fields === null) {
        // Deleted while pending (trimmed or replaced): nothing to deliver, clear it from the group.
        await this.o.client.call('XACK', e.stream, this.group, e.id).catch(() => {});
        continue;
      }
      if (this.stopping) {
        await this.releaseEntry(e).catch(() => {});
      } else if (slots > 0) {
        slots--;
        this.dispatch(e, slot);
      } else {
        this.buffer.push(e);
      }
    }
  }

  private releaseEntry(e: Entry): Promise<unknown> {
    return CLAIM_OWN.run(
      this.o.connections.ready(),
      [e.stream],
      [this.group, e.id, this.o.consumer, RELEASED_IDLE_MS, String(Math.max(0, e.deliveryCount - 1))],
    );
  }

  // ---------------------------------------------------------------- deliveries

  private dispatch(e: Entry, slot = this.slotOf(e)): void {
    const message = decodeFields(e.fields ?? [], this.bodies);
    const delivery = new RedisDelivery(this.settler, e, slot, message);
    this.inFlight.set(delivery.slot, delivery);
    this.handling.tryAcquire(); // `freeSlots` counted it
    this.o.onDelivery(delivery);
  }

  /** Marks `d` settled by core (which settles each delivery once): its slot is free. */
  private beginSettle(d: RedisDelivery): void {
    d.settled = true;
    this.handling.release();
    if (d.timer !== undefined) clearInterval(d.timer);
  }

  /** Bookkeeping once the outcome of `d` is recorded in Redis, or failed to be (`failed`). */
  private endSettle(d: RedisDelivery, failed: boolean): void {
    if (failed) this.needPending = true; // still pending in Redis: read it again once Redis answers
    this.inFlight.delete(d.slot);
    this.settledDuring?.add(d.slot);
  }

  /** Runs the settle `op` of one delivery (retry, dead letter, release): one script each. */
  private async settleWith(d: RedisDelivery, op: (client: Redis) => Promise<void>): Promise<void> {
    this.beginSettle(d);
    let failed = true;
    try {
      await op(this.o.connections.ready());
      failed = false;
    } finally {
      this.endSettle(d, failed);
      this.wake();
    }
  }

  /** `Delivery.ack`: joins the acknowledgements of this event-loop turn (one `XACK` per stream). */
  private ack(d: RedisDelivery): Promise<void> {
    this.beginSettle(d);
    return d.stream === this.o.keys.retry ? this.retryAcks.add(d) : this.streamAcks.add(d);
  }

  /**
   * Acknowledges `ds` — entries of one stream — with one command: `XACK <stream> <group> <ids…>`,
   * or for the group's retry stream the `ACK_DELETE` script (`XACK` + `XDEL`, atomically). Their
   * `ack` promises settle with it; a failure leaves them pending in Redis (read again later).
   */
  private async flushAcks(stream: string, ds: RedisDelivery[]): Promise<void> {
    const ids: string[] = new Array(ds.length);
    for (let i = 0; i < ds.length; i++) ids[i] = (ds[i] as RedisDelivery).id;
    let failed = true;
    try {
      const client = this.o.connections.ready();
      const acked =
        stream === this.o.keys.retry
          ? ACK_DELETE.run(client, [stream], [this.group, ...ids])
          : client.call('XACK', stream, this.group, ...ids);
      // The slots of `ds` are free (core settled them): the next read goes out while this command is on its way.
      this.wake();
      await acked;
      failed = false;
    } finally {
      for (const d of ds) this.endSettle(d, failed);
      this.wake();
    }
  }

  /**
   * `Delivery.retry`: acknowledge and park a copy — the body with exactly `headers` (core's) — in
   * the group's delayed set, atomically.
   */
  private retry(d: RedisDelivery, delayMs: number, headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settleWith(d, async (client) => {
      const delay = Math.max(0, Math.round(delayMs));
      const done = await RETRY.run(
        client,
        [d.stream, this.o.keys.delayed],
        [this.group, d.id, this.o.consumer, delay, this.isRetryStream(d), randomUUID(), ...encodeFields(headers, d.body)],
      );
      if (Number(done) === 1) this.scheduleMove(delay);
    });
  }

  /** `Delivery.deadLetter`: append the body with exactly `headers` (core's) to the group's dlq and acknowledge, atomically. */
  private deadLetter(d: RedisDelivery, headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settleWith(d, async (client) => {
      await DEAD_LETTER.run(
        client,
        [d.stream, this.o.keys.dlq],
        [this.group, d.id, this.o.consumer, this.isRetryStream(d), ...encodeFields(headers, d.body)],
      );
    });
  }

  /**
   * `Delivery.release`: give the entry back natively, without counting a redelivery — it stays
   * pending with its delivery count reset to what it was before this hand-over, idle enough for
   * any member's next `XAUTOCLAIM` (which counts it again).
   */
  private release(d: RedisDelivery): Promise<void> {
    return this.settleWith(d, () => this.claimOwn(d, RELEASED_IDLE_MS, String(Math.max(0, d.deliveryCount - 1))));
  }

  /** `Delivery.extendLease`. */
  private async extendLease(d: RedisDelivery, ms: number): Promise<void> {
    if (d.settled) return;
    const idle = this.o.settings.claimIdleMs;
    clearInterval(d.timer);
    await this.claimOwn(d, idle - Math.min(ms, idle), '');
    if (ms <= idle) return;
    // Redis idles count from the last claim: keep re-claiming until `ms` is covered.
    const until = Date.now() + ms;
    d.timer = setInterval(() => {
      const left = until - Date.now();
      if (left <= idle) clearInterval(d.timer);
      this.claimOwn(d, idle - Math.min(Math.max(0, left), idle), '').catch((error: unknown) => {
        clearInterval(d.timer);
        this.o.logger.warn({ group: this.group, position: d.position, err: describeError(error) }, 'could not extend the lease');
      });
    }, idle / 2);
    d.timer.unref();
  }

  /** Re-claims `d` for this consumer (`ctx.extendLease`, release); Redis's errors as `BusError`s. */
  private async claimOwn(d: RedisDelivery, idleMs: number, retryCount: string): Promise<void> {
    let owned: unknown;
    try {
      owned = await CLAIM_OWN.run(
        this.o.connections.ready(),
        [d.stream],
        [this.group, d.id, this.o.consumer, Math.max(0, Math.round(idleMs)), retryCount],
      );
    } catch (error) {
      throw this.o.connections.toBusError(error, `XCLAIM of ${d.stream} ${d.id}`);
    }
    if (Number(owned) !== 1) throw new Error(`lease of ${d.stream} ${d.id} was lost: another consumer claimed it`);
  }

  /**
   * Key of an entry in the in-flight table: its id for the event stream, `r<id>` for the retry
   * stream (ids of the two streams may be equal; the id as read is already a flat, hashed string).
   */
  private slotOf(e: { readonly stream: string; readonly id: string }): string {
    return e.stream === this.o.keys.stream ? e.id : `r${e.id}`;
  }

  private isRetryStream(d: RedisDelivery): '1' | '0' {
    return d.stream === this.o.keys.retry ? '1' : '0';
  }

  // ---------------------------------------------------------------- retries and retention

  /** Runs the mover in `inMs` (earlier than an already scheduled run only). */
  private scheduleMove(inMs: number): void {
    if (this.closed) return;
    const at = Date.now() + Math.max(0, inMs);
    if (this.moveTimer !== undefined && this.moveAt <= at) return;
    clearTimeout(this.moveTimer);
    this.moveAt = at;
    this.moveTimer = setTimeout(() => void this.move(), Math.max(0, inMs));
    this.moveTimer.unref();
  }

  private async move(): Promise<void> {
    this.moveTimer = undefined;
    this.moveAt = Number.POSITIVE_INFINITY;
    if (this.closed) return;
    let next = this.o.settings.retryPollMs;
    try {
      const [moved, wait] = (await MOVE.run(this.o.connections.ready(), [this.o.keys.delayed, this.o.keys.retry], [MOVE_BATCH])) as [
        number,
        number,
      ];
      if (moved >= MOVE_BATCH) next = 0;
      else if (wait >= 0) next = Math.min(wait, next);
    } catch (error) {
      this.o.logger.debug({ group: this.group, err: describeError(error) }, 'retry mover failed; trying again');
    }
    this.scheduleMove(next);
  }

  private async trim(): Promise<void> {
    try {
      await TRIM_ACKED.run(this.o.connections.ready(), [this.o.keys.stream], []);
    } catch (error) {
      this.o.logger.debug({ stream: this.o.keys.stream, err: describeError(error) }, 'trim failed');
    }
  }

  // ---------------------------------------------------------------- lifecycle

  stop(): Promise<void> {
    if (this.stopped) return this.stopped;
    this.stopping = true;
    this.stopped = (async () => {
      this.wake();
      let done = false;
      void this.loop.finally(() => {
        done = true;
      });
      const deadline = Date.now() + this.o.settings.blockMs + 1_000;
      while (!done && Date.now() < deadline) {
        if (this.blocked && this.clientId !== undefined) {
          await this.o.client.call('CLIENT', 'UNBLOCK', this.clientId).catch(() => {});
        }
        await Promise.race([this.loop, new Promise((r) => setTimeout(r, 50))]);
      }
      if (!done) {
        // Redis unreachable: drop the connection. A read still queued in ioredis may never settle,
        // so wait only briefly; anything it returns later is released, not delivered (stopping).
        this.conn.disconnect();
        await Promise.race([this.loop, new Promise((r) => setTimeout(r, 1_000).unref())]);
      }
      const buffered = this.buffer.splice(0);
      await Promise.allSettled(buffered.map((e) => this.releaseEntry(e)));
    })();
    return this.stopped;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.stop();
    this.closed = true;
    clearTimeout(this.moveTimer);
    clearInterval(this.trimTimer);
    for (const d of this.inFlight.values()) clearInterval(d.timer);
    try {
      const client = this.o.connections.ready();
      for (const stream of this.streams) await DROP_CONSUMER.run(client, [stream], [this.group, this.o.consumer]);
    } catch {
      // best effort: an empty consumer left behind costs nothing
    }
    await quit(this.conn, this.o.settings.healthCheck.timeoutMs);
    this.o.onClosed(this);
  }
}
