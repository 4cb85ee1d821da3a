import {
  type Clock,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
  Headers,
  type StoredDeadLetter,
  type SubscriptionSpec,
  TimeoutError,
  type WireMessage,
} from '@busbar/core';
import { EventEmitter } from 'eventemitter3';

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

interface Entry {
  readonly offset: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Uint8Array;
  readonly key: string | undefined;
}

interface Member {
  readonly group: Group;
  readonly concurrency: number;
  readonly clock: Clock;
  readonly onDelivery: (delivery: Delivery) => void;
  readonly inFlight: Set<InFlight>;
}

interface InFlight {
  readonly entry: Entry;
  readonly member: Member;
  state: 'open' | 'settled' | 'returned';
}

interface Group {
  readonly topic: string;
  queue: Entry[];
  readonly members: Member[];
  rr: number;
  inFlight: number;
  readonly delayed: Set<{ cancel: () => void }>;
  readonly dead: { readonly handle: string; readonly entry: Entry }[];
  /** Keys with a delivery in flight or a retry pending (blocking later same-key messages when ordered). */
  readonly held: Map<string, number>;
  ordered: boolean;
}

interface Topic {
  readonly log: Entry[];
  readonly groups: Map<string, Group>;
}

/** Attempt number carried in the `Headers.attempt` header (1 when absent or invalid). */
function attemptOf(headers: Readonly<Record<string, string>>): number {
  const n = Number(headers[Headers.attempt]);
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

function copy(entry: Entry): WireMessage {
  return { headers: { ...entry.headers }, body: new Uint8Array(entry.body) };
}

/**
 * The in-memory "broker": per topic an append-only log, per (topic, group) a durable queue (created
 * on the group's first subscribe, kept while no member is connected), retry timers and dead
 * letters. Share one between several `MemoryTransport`s to model several processes on one broker.
 * Nothing survives the process.
 */
export class MemoryBroker {
  private readonly topics = new Map<string, Topic>();
  private readonly appends = new EventEmitter<{ append: [topic: string, entry: Entry] }>();
  private readonly pumpScheduled = new Set<Group>();
  private readonly idleWaiters = new Set<{ includeDelayed: boolean; resolve: () => void }>();
  private idleCheckScheduled = false;
  private sequence = 0;

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

  /** @internal Appends a message to `topic` (body copied) and hands it to every group of the topic. */
  append(topic: string, message: RawMessage): void {
    const t = this.topic(topic);
    const entry: Entry = {
      offset: t.log.length,
      headers: Object.freeze({ ...message.headers }),
      body: new Uint8Array(message.body),
      key: message.key ?? message.headers[Headers.partitionKey],
    };
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
      g = {
        topic: spec.topic,
        queue: spec.startFrom === 'earliest' ? t.log.slice() : [],
        members: [],
        rr: 0,
        inFlight: 0,
        delayed: new Set(),
        dead: [],
        held: new Map(),
        ordered: false,
      };
      t.groups.set(spec.group, g);
    }
    g.ordered = spec.orderedByKey;
    const group = g;
    const member: Member = { group, concurrency: Math.max(1, spec.concurrency), clock, onDelivery, inFlight: new Set() };
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
        const open = [...member.inFlight].reverse();
        for (const rec of open) {
          rec.state = 'returned';
          this.untrack(rec);
          group.queue.unshift(rec.entry);
        }
        if (open.length > 0) this.schedule(group);
        this.changed();
      },
    };
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
      g.queue.push({ ...rec.entry, headers: Object.freeze({ ...headers }) });
      this.schedule(g);
    }
    this.changed();
    return selected;
  }

  private topic(name: string): Topic {
    let t = this.topics.get(name);
    if (!t) {
      t = { log: [], groups: new Map() };
      this.topics.set(name, t);
    }
    return t;
  }

  private probe(topic: string, onClose: () => void): MemoryProbe {
    const seen = new Map<string, WireMessage>();
    const waiters = new Map<string, Set<{ resolve: (m: WireMessage) => void; reject: (e: Error) => void }>>();
    const listener = (t: string, entry: Entry) => {
      const id = entry.headers[Headers.id];
      if (t !== topic || id === undefined || seen.has(id)) return;
      const message = copy(entry);
      seen.set(id, message);
      for (const w of waiters.get(id) ?? []) w.resolve(message);
      waiters.delete(id);
    };
    this.appends.on('append', listener);
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
        for (const set of waiters.values()) for (const w of set) w.reject(new Error(`raw probe on ${topic} closed`));
        waiters.clear();
        onClose();
      },
    };
  }

  /** Delivers on a microtask, so appends and settlements never re-enter a consumer callback. */
  private schedule(g: Group): void {
    if (this.pumpScheduled.has(g)) return;
    this.pumpScheduled.add(g);
    queueMicrotask(() => {
      this.pumpScheduled.delete(g);
      this.pump(g);
    });
  }

  private blocked(g: Group, entry: Entry): boolean {
    return g.ordered && entry.key !== undefined && g.held.has(entry.key);
  }

  private pump(g: Group): void {
    let i = 0;
    while (i < g.queue.length) {
      const entry = g.queue[i] as Entry;
      if (this.blocked(g, entry)) {
        i++;
        continue;
      }
      const member = this.nextMember(g);
      if (!member) break;
      if (i === 0) g.queue.shift();
      else g.queue.splice(i, 1);
      this.deliver(member, entry);
    }
    this.changed();
  }

  /** Round-robin over live members that have room under their `concurrency`. */
  private nextMember(g: Group): Member | undefined {
    const n = g.members.length;
    for (let k = 0; k < n; k++) {
      const idx = (g.rr + k) % n;
      const m = g.members[idx] as Member;
      if (m.inFlight.size < m.concurrency) {
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

  private untrack(rec: InFlight): void {
    const g = rec.member.group;
    rec.member.inFlight.delete(rec);
    g.inFlight--;
    this.hold(g, rec.entry.key, -1);
  }

  private deliver(member: Member, entry: Entry): void {
    const g = member.group;
    const rec: InFlight = { entry, member, state: 'open' };
    member.inFlight.add(rec);
    g.inFlight++;
    this.hold(g, entry.key, 1);
    const attempt = attemptOf(entry.headers);
    const settle = (effect: () => void): Promise<void> => {
      if (rec.state !== 'open') {
        const why = rec.state === 'returned' ? 'was returned to its group when the subscription closed' : 'is already settled';
        return Promise.reject(new Error(`delivery ${g.topic}@${entry.offset} ${why}`));
      }
      rec.state = 'settled';
      this.untrack(rec);
      effect();
      this.schedule(g);
      this.changed();
      return Promise.resolve();
    };
    member.onDelivery({
      headers: entry.headers,
      body: new Uint8Array(entry.body),
      key: entry.key,
      attempt,
      position: `${g.topic}@${entry.offset}`,
      ack: () => settle(() => {}),
      retry: (delayMs, extraHeaders) =>
        settle(() => {
          const headers = Object.freeze({ ...entry.headers, ...extraHeaders, [Headers.attempt]: String(attempt + 1) });
          this.retryLater(g, { ...entry, headers }, delayMs, member.clock);
        }),
      deadLetter: (deadLetterHeaders) =>
        settle(() => {
          g.dead.push({
            handle: String(++this.sequence),
            entry: { ...entry, headers: Object.freeze({ ...entry.headers, ...deadLetterHeaders }) },
          });
        }),
      release: () => settle(() => g.queue.unshift(entry)),
    });
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
    else g.queue.splice(i, 0, entry);
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
        if (g.queue.some((e) => !this.blocked(g, e))) return false;
      }
    }
    return true;
  }
}
