/**
 * The `bus.describeGroups` scenario every broker suite runs on its real broker: a group that has
 * settled one message (so it committed a position), then holds one retry and one dead letter, then
 * stops consuming while `backlog` more messages are published. The transport must then report the
 * backlog, the held retry and the dead letter from broker state.
 */
import { randomUUID } from 'node:crypto';
import { defineEvent, EventBus, type GroupDescription, OutcomeSpy } from '@busbar/core';
import type { Transport } from '@busbar/core/transport';
import { expect } from 'vitest';
import { z } from 'zod';

const Job = defineEvent({
  type: 'groups.job',
  version: 1,
  schema: z.object({ kind: z.enum(['ok', 'retry', 'dead']) }),
});

/** How long the retry copy is held: far beyond the test, so it is still waiting when described. */
const HELD_MS = 60_000;

/** What the scenario saw. */
export interface GroupsScenarioResult {
  /** The group as the subscribing bus described it. */
  readonly described: GroupDescription;
  /** The group's name and its broker topic. */
  readonly group: string;
  readonly topic: string;
  /** The groups `observer` described on the topic (another process that never subscribed). */
  readonly observed?: readonly GroupDescription[];
  /** What `options.named` returned, asked while the observer was open. */
  readonly named?: readonly GroupDescription[];
}

/**
 * Runs the scenario on `transport` in `namespace` (after asserting backlog, retrying and dead
 * letters). `observer`: a second transport, asked through its own bus after the first one
 * described the group; `named` is then called with it (for a transport-specific call).
 * `settleTimeoutMs` bounds each wait.
 */
export async function describeGroupsScenario(
  transport: Transport,
  namespace: string,
  options: {
    backlog?: number;
    settleTimeoutMs?: number;
    observer?: Transport;
    named?: (observer: Transport, topic: string, group: string) => Promise<readonly GroupDescription[]>;
  } = {},
): Promise<GroupsScenarioResult> {
  const n = options.backlog ?? 3;
  const timeoutMs = options.settleTimeoutMs ?? 20_000;
  const group = `g${randomUUID().slice(0, 6)}`;
  const bus = new EventBus({ transport, namespace });
  const spy = new OutcomeSpy(bus);
  try {
    await bus.ready();
    const sub = await bus.subscribe(Job, { group, retry: { maxAttempts: 5 } }, async ({ kind }, ctx) => {
      if (kind === 'retry') ctx.retry({ delayMs: HELD_MS });
      if (kind === 'dead') ctx.deadLetter('describeGroups test');
    });
    const ok = await bus.publish(Job, { kind: 'ok' });
    await spy.waitFor(ok.id, { status: 'acked', timeoutMs });
    const retried = await bus.publish(Job, { kind: 'retry' });
    await spy.waitFor(retried.id, { status: 'retried', timeoutMs });
    const dead = await bus.publish(Job, { kind: 'dead' });
    await spy.waitFor(dead.id, { status: 'dead-lettered', timeoutMs });
    await sub.close();

    const before = (await bus.describeGroups(Job)).find((g) => g.group === group);
    expect(before, `group ${group} described`).toBeDefined();
    expect(before?.backlog).toBe(0);

    await Promise.all(Array.from({ length: n }, () => bus.publish(Job, { kind: 'ok' })));
    const described = (await bus.describeGroups(Job)).find((g) => g.group === group);
    expect(described).toMatchObject({ group, backlog: n, retrying: 1, deadLetters: 1 });
    if (described?.inFlight !== undefined) expect(described.inFlight).toBe(0);
    const result = { described: described as GroupDescription, group, topic: bus.topicOf(Job) };
    if (options.observer === undefined) return result;
    const other = new EventBus({ transport: options.observer, namespace });
    try {
      await other.ready();
      const observed = await other.describeGroups(Job);
      const named = await options.named?.(options.observer, result.topic, group);
      return named === undefined ? { ...result, observed } : { ...result, observed, named };
    } finally {
      await other.close();
    }
  } finally {
    await bus.close();
  }
}
