import {
  type Clock,
  ConfigError,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
  type GroupDescription,
  HeaderNames,
  type StoredDeadLetter,
  type SubscriptionSpec,
  TimeoutError,
  type WireMessage,
} from '@busbar/core/transport';
import { EventEmitter } from 'eventemitter3';
import { ByteStore } from './bytes.js';
import { Deque } from './deque.js';

/** A message written below the bus (see {@link MemoryRawClient.write}). */
export type RawMessage = WireMessage & { readonly key?: string | undefined };

/** A raw view of one topic: sees every message appended after it was opened. */
export interface MemoryProbe {
  /** Resolves with the message whose `ce_id` header is `id` once appended; rejects with `TimeoutError` after `timeoutMs`. */
  waitFor(id: string, timeoutMs: number): Promise<WireMessage>;
  /** Stops observing; pending `waitFor` calls reject. */
  close(): Promise<void>;
}

/** Access to a {@link MemoryBroker} below the bus (shape of conformance's `RawBrokerClient`). */
export interface MemoryRawClient {
  /** Appends a message (arbitrary headers and bytes) to `topic`: every existing group of it receives it. */
  write(topic: string, message: RawMessage): Promise<void>;
  /** Starts observing `topic`; sees what is appended after it resolves. */
  observe(topic: string): Promise<MemoryProbe>;
  /** Closes every probe opened through this client. */
  close(): Promise<void>;
}

/** Options of {@link MemoryBroker.idle}. */
export interface IdleOptions {
  /** Also wait for retries whose delay has not elapsed yet (advance a `ManualClock` meanwhile). @defaultValue false */
  includeDelayed?: boolean;
}

/** @internal A live consumer of a group, created by {@link MemoryBroker.join}. */
export interface MemoryMember {
  /** Stop receiving new deliveries; handed-over ones may still be settled. */
  stop(): void;
  /** Stop, and return unsettled deliveries to the head of the group's queue. */
  close(): void;
}

/**
 * Which messages a topic's log keeps for groups created later with `startFrom: 'earliest'` (see
 * {@link MemoryBrokerOptions.retention}). Existing groups never lose a message either way: their
 * queues, retries and dead letters hold what they still need.
 */
export type MemoryRetention = 'all' | 'unacked';

/** Options of {@link MemoryBroker}. */
export interface MemoryBrokerOptions {
  /**
   * What each topic's log keeps (the log is only read when a *new* group starts at
   * `'earliest'`):
   * - `'all'`: every message, for the life of the broker (a broker without a retention limit).
   * - `'unacked'`: a message leaves the log once every group of its topic has settled it (acked
   *   or dead-lettered), like the Redis transport's `retention: { trim: 'acked' }`; with no group
   *   on the topic nothing is dropped. A group created later with `'earliest'` then starts at the
   *   oldest message an existing group still has to settle. Memory then stays proportional to
   *   the backlog, which long runs (benchmarks, soak tests) need.
   * @defaultValue 'all'
   */
  retention?: MemoryRetention;
}

/**
 * A stored message, as queued for a group (retries and dead letters hold copies with other headers
 * and the same bytes). Its body is where it lies in the broker's byte store (`bytes[at..at+size)`),
 * not a view of its own: a view costs ~100 bytes of heap, a third of what a message the log
 * retains costs (and garbage collections copy what survives).
 */
class Entry {
  /**
   * On an appended entry with retention `'unacked'`: how many groups still have to settle it
   * (it leaves the log at 0).
   */
  pending = 0;
  constructor(
    readonly offset: number,
    readonly headers: Readonly<Record<string, string>>,
    /** The slab (or own buffer) holding the body. */
    readonly bytes: Buffer,
    /** Where the body starts in `bytes`. */
    readonly at: number,
    /** The body's length in bytes. */
    readonly size: number,
    readonly key: string | undefined,
    /** The appended entry whose `pending` a group's settlement of this one decrements; none with retention `'all'`, or once dead-lettered. */
    public origin: Entry | undefined,
  ) {}
}

interface Member {
  readonly group: Group;
  readonly concurrency: number;
  readonly clock: Clock;
  readonly onDelivery: (delivery: Delivery) => void;
  /**
   * Unsettled deliveries, in delivery order: a list linked through `MemoryDelivery.prev/next`
   * (a `Set`'s add and delete per delivery allocate as its table is rebuilt).
   */
  first: MemoryDelivery | undefined;
  last: MemoryDelivery | undefined;
  /** How many deliveries the list holds. */
  inFlight: number;
}

interface Group {
  readonly topic: Topic;
  readonly queue: Deque<Entry>;
  readonly members: Member[];
  rr: number;
  inFlight: number;
  readonly delayed: Set<{ cancel: () => void }>;
  readonly dead: { readonly handle: string; readonly entry: Entry }[];
  /** Keys with a delivery in flight or a retry pending (blocking later same-key messages when ordered). */
  readonly held: Map<string, number>;
  ordered: boolean;
  /** A pump is queued on a microtask. */
  scheduled: boolean;
  /** The queued pump (one function per group, not one closure per schedule). */
  readonly run: () => void;
}

interface Topic {
  readonly name: string;
  readonly log: Deque<Entry>;
  readonly groups: Map<string, Group>;
  /** Offset of the next appended message. */
  next: number;
}

type Settlement = 'ack' | 'retry' | 'dead-letter' | 'release';

/**
 * What a delivery calls to settle itself (the broker's private `settle`). Core settles each
 * delivery once, so the broker keeps no settle-once guard; it only refuses a settle of a delivery
 * its member already gave back to the group (the subscription closed), as a broker refuses an
 * acknowledgement on a closed channel.
 */
interface Settler {
  settle(d: MemoryDelivery, how: Settlement, delayMs: number, headers: Readonly<Record<string, string>> | undefined): Promise<void>;
}

/**
 * One delivery. A class rather than an object of closures: a delivery costs one small object and
 * its own copies of the headers and body. It carries no attempt number: core computes it from the
 * `ce_busbarattempt` header of the copy (this broker keeps no delivery count of its own, so
 * `redeliveries` is 0; a message given back on close keeps its attempt).
 */
class MemoryDelivery implements Delivery {
  /** Given back to its group when its member closed: a later settle is refused. */
  returned = false;
  /** Neighbours in the member's list of unsettled deliveries. */
  prev: MemoryDelivery | undefined = undefined;
  next: MemoryDelivery | undefined = undefined;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Uint8Array;
  readonly key: string | undefined;
  readonly redeliveries = 0;

  constructor(
    private readonly settler: Settler,
    bytes: ByteStore,
    readonly member: Member,
    readonly entry: Entry,
  ) {
    this.headers = { ...entry.headers };
    this.body = bytes.copyOut(entry);
    this.key = entry.key;
  }

  get position(): string {
    return `${this.member.group.topic.name}@${this.entry.offset}`;
  }

  ack(): Promise<void> {
    return this.settler.settle(this, 'ack', 0, undefined);
  }

  retry(delayMs: number, headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settler.settle(this, 'retry', delayMs, headers);
  }

  deadLetter(headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settler.settle(this, 'dead-letter', 0, headers);
  }

  /** Gives the message back natively (to the head of the group's queue): the copy's `headers` are not needed. */
  release(_headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settler.settle(this, 'release', 0, undefined);
  }
}

const RESOLVED = Promise.resolve();

/** A copy of `entry` to hand out (probes, dead letters): its own headers object and bytes (an `ArrayBuffer` of their own). */
function copy(entry: Entry): WireMessage {
  return { headers: { ...entry.headers }, body: new Uint8Array(entry.bytes.subarray(entry.at, entry.at + entry.size)) };
}

/**
 * The in-memory "broker": per topic an append-only log (see {@link MemoryBrokerOptions.retention}),
 * per (topic, group) a durable queue (created on the group's first subscribe, kept while no member
 * is connected), retry timers and dead letters. Share one between several `MemoryTransport`s to
 * model several processes on one broker. Nothing survives the process.
 */
export class MemoryBroker {
  /** See {@link MemoryBrokerOptions.retention}. */
  readonly retention: MemoryRetention;
  private readonly topics = new Map<string, Topic>();
  /** Open raw probes per topic (on RabbitMQ each is a queue bound to the exchange). */
  private readonly probes = new Map<string, number>();
  private readonly appends = new EventEmitter<{ append: [topic: string, entry: Entry] }>();
  private readonly idleWaiters = new Set<{ includeDelayed: boolean; resolve: () => void }>();
  private readonly settler: Settler = { settle: (d, how, delayMs, headers) => this.settle(d, how, delayMs, headers) };
  private readonly bytes = new ByteStore();
  private idleCheckScheduled = false;
  private sequence = 0;

  /** @param options - see {@link MemoryBrokerOptions}; all optional. */
  constructor(options: MemoryBrokerOptions = {}) {
    const retention = options.retention ?? 'all';
    if (retention !== 'all' && retention !== 'unacked') {
      throw new ConfigError(`MemoryBroker retention must be 'all' or 'unacked', got ${JSON.stringify(retention)}`);
    }
    this.retention = retention;
  }

  /** A raw client of this broker, for tests and conformance (`RawBrokerClient`). */
  rawClient(): MemoryRawClient {
    const probes = new Set<MemoryProbe>();
    return {
      write: async (topic, message) => this.append(topic, message),
      observe: async (topic) => {
        const probe = this.probe(topic, () => probes.delete(probe));
        probes.add(probe);
        return probe;
      },
      close: async () => {
        await Promise.all([...probes].map((p) => p.close()));
      },
    };
  }

  /**
   * Resolves once no message is deliverable or in flight for any group that has a live member
   * (retries still waiting for their delay count only with `includeDelayed`). Await your publishes
   * first: a publish not yet handed to the transport is not seen.
   */
  idle(options: IdleOptions = {}): Promise<void> {
    return new Promise((resolve) => {
      this.idleWaiters.add({ includeDelayed: options.includeDelayed ?? false, resolve });
      this.changed();
    });
  }

  /** Messages each topic's log holds now (see {@link MemoryBrokerOptions.retention}), for tests and diagnostics. */
  logLength(topic: string): number {
    return this.topics.get(topic)?.log.length ?? 0;
  }

  /** @internal Queues a publish to `topic` reaches: its groups (from their first subscribe on) and open raw probes. */
  routes(topic: string): number {
    return (this.topics.get(topic)?.groups.size ?? 0) + (this.probes.get(topic) ?? 0);
  }

  /** Deletes every topic whose name starts with `prefix`, with its groups, retries and dead letters. Returns how many. */
  deleteTopics(prefix: string): number {
    let n = 0;
    for (const [name, topic] of this.topics) {
      if (!name.startsWith(prefix)) continue;
      for (const g of topic.groups.values()) for (const d of g.delayed) d.cancel();
      this.topics.delete(name);
      n++;
    }
    this.changed();
    return n;
  }

  /** @internal Appends a message to `topic` (headers and body copied) and hands it to every group of the topic. */
  append(topic: string, message: RawMessage): void {
    const t = this.topic(topic);
    // Stored copies are never handed out (deliveries and readers get their own copies), so they
    // need no freezing — which would cost more than the rest of an append.
    const headers = { ...message.headers };
    const at = this.bytes.put(message.body);
    const entry = new Entry(
      t.next++,
      headers,
      this.bytes.last,
      at,
      message.body.byteLength,
      message.key ?? headers[HeaderNames.partitionKey],
      undefined,
    );
    if (this.retention === 'unacked') {
      entry.origin = entry;
      entry.pending = t.groups.size;
    }
    t.log.push(entry);
    for (const g of t.groups.values()) {
      g.queue.push(entry);
      this.schedule(g);
    }
    this.appends.emit('append', topic, entry);
    this.changed();
  }

  /** @internal Adds a member to (topic, group), creating the group at `spec.startFrom` if it does not exist. */
  join(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void, clock: Clock): MemoryMember {
    const t = this.topic(spec.topic);
    let g = t.groups.get(spec.group);
    if (!g) {
      const history = spec.startFrom === 'earliest' ? t.log.toArray() : [];
      for (const e of history) if (e.origin) e.origin.pending++;
      const group: Group = {
        topic: t,
        queue: new Deque(history),
        members: [],
        rr: 0,
        inFlight: 0,
        delayed: new Set(),
        dead: [],
        held: new Map(),
        ordered: false,
        scheduled: false,
        run: () => this.pump(group),
      };
      g = group;
      t.groups.set(spec.group, g);
    }
    g.ordered = spec.orderedByKey;
    const group = g;
    const member: Member = {
      group,
      concurrency: Math.max(1, spec.concurrency),
      clock,
      onDelivery,
      first: undefined,
      last: undefined,
      inFlight: 0,
    };
    group.members.push(member);
    this.schedule(group);
    const stop = () => {
      const i = group.members.indexOf(member);
      if (i < 0) return;
      group.members.splice(i, 1);
      if (i < group.rr) group.rr--;
      this.changed();
    };
    return {
      stop,
      close: () => {
        stop();
        const returned = member.inFlight > 0;
        // Newest first, each to the head of the queue: they come back in delivery order.
        for (let d = member.last; d !== undefined; ) {
          const prev = d.prev;
          d.returned = true;
          this.untrack(d);
          group.queue.unshift(d.entry);
          d = prev;
        }
        if (returned) this.schedule(group);
        this.changed();
      },
    };
  }

  /** @internal See `Transport.describeGroups`: every count is known here. */
  describeGroups(topic: string): GroupDescription[] {
    const t = this.topics.get(topic);
    if (!t) return [];
    return [...t.groups].map(([group, g]) => ({
      group,
      backlog: g.queue.length,
      inFlight: g.inFlight,
      retrying: g.delayed.size,
      deadLetters: g.dead.length,
    }));
  }

  /** @internal See `Transport.processDeadLetters`. */
  processDeadLetters(target: DeadLetterTarget, scan: DeadLetterScan): StoredDeadLetter[] {
    const g = this.topics.get(target.topic)?.groups.get(target.group);
    const selected: StoredDeadLetter[] = [];
    if (!g) return selected;
    for (const rec of [...g.dead]) {
      if (selected.length >= scan.limit) break;
      const stored: StoredDeadLetter = { handle: rec.handle, ...copy(rec.entry) };
      const headers = scan.select(stored);
      if (headers === undefined) continue;
      selected.push(stored);
      if (scan.dryRun) continue;
      g.dead.splice(g.dead.indexOf(rec), 1);
      const e = rec.entry;
      g.queue.push(new Entry(e.offset, { ...headers }, e.bytes, e.at, e.size, e.key, undefined));
      this.schedule(g);
    }
    this.changed();
    return selected;
  }

  private topic(name: string): Topic {
    let t = this.topics.get(name);
    if (!t) {
      t = { name, log: new Deque(), groups: new Map(), next: 0 };
      this.topics.set(name, t);
    }
    return t;
  }

  private probe(topic: string, onClose: () => void): MemoryProbe {
    const seen = new Map<string, WireMessage>();
    const waiters = new Map<string, Set<{ resolve: (m: WireMessage) => void; reject: (e: Error) => void }>>();
    const listener = (t: string, entry: Entry) => {
      const id = entry.headers[HeaderNames.id];
      if (t !== topic || id === undefined || seen.has(id)) return;
      const message = copy(entry);
      seen.set(id, message);
      for (const w of waiters.get(id) ?? []) w.resolve(message);
      waiters.delete(id);
    };
    this.appends.on('append', listener);
    this.probes.set(topic, (this.probes.get(topic) ?? 0) + 1);
    let open = true;
    return {
      waitFor: (id, timeoutMs) => {
        const hit = seen.get(id);
        if (hit) return Promise.resolve(hit);
        return new Promise((resolve, reject) => {
          const set = waiters.get(id) ?? new Set();
          waiters.set(id, set);
          const waiter = {
            resolve: (m: WireMessage) => {
              clearTimeout(timer);
              resolve(m);
            },
            reject: (e: Error) => {
              clearTimeout(timer);
              reject(e);
            },
          };
          const timer = setTimeout(() => {
            set.delete(waiter);
            reject(new TimeoutError(`raw probe on ${topic} did not see message ${id} within ${timeoutMs} ms`));
          }, timeoutMs);
          set.add(waiter);
        });
      },
      close: async () => {
        this.appends.off('append', listener);
        if (open) this.probes.set(topic, (this.probes.get(topic) ?? 1) - 1);
        open = false;
        for (const set of waiters.values()) for (const w of set) w.reject(new Error(`raw probe on ${topic} closed`));
        waiters.clear();
        onClose();
      },
    };
  }

  /** Delivers on a microtask, so appends and settlements never re-enter a consumer callback. */
  private schedule(g: Group): void {
    if (g.scheduled) return;
    g.scheduled = true;
    queueMicrotask(g.run);
  }

  private blocked(g: Group, entry: Entry): boolean {
    return g.ordered && entry.key !== undefined && g.held.has(entry.key);
  }

  private pump(g: Group): void {
    g.scheduled = false;
    const queue = g.queue;
    if (!g.ordered) {
      // Nothing is ever blocked: hand over from the head, O(1) per delivery.
      while (queue.length > 0) {
        const member = this.nextMember(g);
        if (!member) break;
        this.deliver(member, queue.shift() as Entry);
      }
    } else {
      let i = 0;
      while (i < queue.length) {
        const entry = queue.at(i);
        if (this.blocked(g, entry)) {
          i++;
          continue;
        }
        const member = this.nextMember(g);
        if (!member) break;
        queue.removeAt(i);
        this.deliver(member, entry);
      }
    }
    this.changed();
  }

  /** Round-robin over live members that have room under their `concurrency`. */
  private nextMember(g: Group): Member | undefined {
    const n = g.members.length;
    for (let k = 0; k < n; k++) {
      const idx = (g.rr + k) % n;
      const m = g.members[idx] as Member;
      if (m.inFlight < m.concurrency) {
        g.rr = (idx + 1) % n;
        return m;
      }
    }
    return undefined;
  }

  private hold(g: Group, key: string | undefined, delta: 1 | -1): void {
    if (key === undefined) return;
    const n = (g.held.get(key) ?? 0) + delta;
    if (n > 0) g.held.set(key, n);
    else g.held.delete(key);
  }

  private untrack(d: MemoryDelivery): void {
    const g = d.member.group;
    const m = d.member;
    if (d.prev) d.prev.next = d.next;
    else m.first = d.next;
    if (d.next) d.next.prev = d.prev;
    else m.last = d.prev;
    d.prev = d.next = undefined;
    m.inFlight--;
    g.inFlight--;
    this.hold(g, d.entry.key, -1);
  }

  private deliver(member: Member, entry: Entry): void {
    const g = member.group;
    const d = new MemoryDelivery(this.settler, this.bytes, member, entry);
    d.prev = member.last;
    if (member.last) member.last.next = d;
    else member.first = d;
    member.last = d;
    member.inFlight++;
    g.inFlight++;
    this.hold(g, entry.key, 1);
    member.onDelivery(d);
  }

  private settle(
    d: MemoryDelivery,
    how: Settlement,
    delayMs: number,
    headers: Readonly<Record<string, string>> | undefined,
  ): Promise<void> {
    if (d.returned) return Promise.reject(new Error(`delivery ${d.position} was returned to its group when the subscription closed`));
    this.untrack(d);
    const g = d.member.group;
    const entry = d.entry;
    switch (how) {
      case 'ack':
        this.done(g, entry);
        break;
      case 'retry': {
        // Core built the copy's complete headers (next attempt included): stored as given.
        const again = new Entry(entry.offset, { ...headers }, entry.bytes, entry.at, entry.size, entry.key, entry.origin);
        this.retryLater(g, again, delayMs, d.member.clock);
        break;
      }
      case 'dead-letter':
        g.dead.push({
          handle: String(++this.sequence),
          entry: new Entry(entry.offset, { ...headers }, entry.bytes, entry.at, entry.size, entry.key, undefined),
        });
        this.done(g, entry);
        break;
      case 'release':
        g.queue.unshift(entry);
        break;
    }
    if (g.queue.length > 0) this.schedule(g);
    this.changed();
    return RESOLVED;
  }

  /** `g` settled `entry` for good: with retention `'unacked'`, the log drops what no group still needs. */
  private done(g: Group, entry: Entry): void {
    const origin = entry.origin;
    if (origin === undefined || --origin.pending > 0) return;
    const t = g.topic;
    if (t.groups.size === 0) return;
    while (t.log.length > 0 && t.log.at(0).pending <= 0) t.log.shift();
  }

  /** Holds `entry` for `delayMs` (its key stays blocked in ordered groups), then re-enqueues it. */
  private retryLater(g: Group, entry: Entry, delayMs: number, clock: Clock): void {
    if (!(delayMs > 0)) {
      this.requeue(g, entry);
      return;
    }
    this.hold(g, entry.key, 1);
    const pending = { cancel: () => {} };
    g.delayed.add(pending);
    pending.cancel = clock.setTimer(() => {
      if (!g.delayed.delete(pending)) return;
      this.hold(g, entry.key, -1);
      this.requeue(g, entry);
      this.schedule(g);
      this.changed();
    }, delayMs);
  }

  /** Re-enqueues a retried message: in ordered groups before later messages of its key, else at the tail. */
  private requeue(g: Group, entry: Entry): void {
    const i = g.ordered && entry.key !== undefined ? g.queue.findIndex((e) => e.key === entry.key) : -1;
    if (i < 0) g.queue.push(entry);
    else g.queue.insertAt(i, entry);
  }

  /** Schedules an idle check after pending microtasks (so core finishes what follows a settlement). */
  private changed(): void {
    if (this.idleWaiters.size === 0 || this.idleCheckScheduled) return;
    this.idleCheckScheduled = true;
    setImmediate(() => {
      this.idleCheckScheduled = false;
      for (const w of this.idleWaiters) {
        if (!this.isIdle(w.includeDelayed)) continue;
        this.idleWaiters.delete(w);
        w.resolve();
      }
    });
  }

  private isIdle(includeDelayed: boolean): boolean {
    for (const t of this.topics.values()) {
      for (const g of t.groups.values()) {
        if (g.inFlight > 0) return false;
        if (g.members.length === 0) continue;
        if (includeDelayed && g.delayed.size > 0) return false;
        if (g.queue.length > 0 && (!g.ordered || g.queue.findIndex((e) => !this.blocked(g, e)) >= 0)) return false;
      }
    }
    return true;
  }
}
