/**
 * The example's `/metrics` endpoint, scraped over HTTP on a free port: the conventions' counters and
 * Busbar's own appear with the values the bus's outcomes say.
 */
import { OutcomeSpy } from '@busbar/core';
import { OrderPlaced, type RunningExample, startExample } from '@busbar/example-otel';
import { afterEach, expect, it } from 'vitest';

let example: RunningExample | undefined;
afterEach(async () => {
  await example?.close();
  example = undefined;
});

/** The value of the sample `name{…labels…}` whose labels include every `labels` entry. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (m === null || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

it('GET /metrics shows the sent, consumed, outcome and dead-letter counters', async () => {
  example = await startExample({ port: 0 });
  const { bus } = example;
  const spy = new OutcomeSpy(bus);
  // n = 1 acks, 5 is retried once, 10 is dead-lettered (NonRetryableError).
  const receipts = await Promise.all([1, 5, 10].map((n) => bus.publish(OrderPlaced, { n })));
  const [one, five, ten] = receipts.map((r) => r.id) as [string, string, string];
  await spy.waitFor(one, { status: 'acked' });
  await spy.waitFor(five, { status: 'acked' });
  await spy.waitFor(five, { status: 'retried' });
  await spy.waitFor(ten, { status: 'dead-lettered' });
  spy.dispose();

  const response = await fetch(example.url);
  expect(response.status).toBe(200);
  const text = await response.text();
  const topic = { messaging_system: 'busbar.memory', messaging_destination_name: bus.topicOf(OrderPlaced) };
  const group = { ...topic, messaging_consumer_group_name: 'billing' };
  expect(sample(text, 'messaging_client_sent_messages_total', topic)).toBe(3);
  expect(sample(text, 'messaging_client_consumed_messages_total', group)).toBe(4);
  expect(sample(text, 'messaging_process_duration_count', group)).toBe(2);
  expect(sample(text, 'busbar_delivery_outcomes_total', { ...group, busbar_delivery_outcome: 'acked' })).toBe(2);
  expect(sample(text, 'busbar_message_retries_total', group)).toBe(1);
  expect(sample(text, 'busbar_message_dead_letters_total', { ...group, busbar_dead_letter_reason: 'non-retryable' })).toBe(1);
  expect(sample(text, 'busbar_publish_pending', { messaging_system: 'busbar.memory' })).toBe(0);
});
