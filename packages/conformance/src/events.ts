/** The events the conformance cases exchange (zod 4 schemas). */
import { defineEvent } from '@busbar/core';
import { z } from 'zod';

/** The workhorse event: a number, optional key/sequence and padding. */
export const Order = defineEvent({
  type: 'cf.order',
  schema: z.object({
    n: z.number().int().nonnegative(),
    key: z.string().optional(),
    seq: z.number().int().nonnegative().optional(),
    pad: z.string().optional(),
  }),
});

/** A richer payload for the round-trip case (unicode, arrays, nesting, floats). */
export const Rich = defineEvent({
  type: 'cf.rich',
  schema: z.object({
    n: z.number().int(),
    text: z.string(),
    tags: z.array(z.string()),
    nested: z.object({ ok: z.boolean(), ratio: z.number(), list: z.array(z.number()) }),
  }),
});

/** Version 1 of a user event: one `name` field. */
export const UserV1 = defineEvent({
  type: 'cf.user',
  version: 1,
  schema: z.object({ name: z.string().min(1) }),
});

/** Version 2 of the same event type: `first`/`last`, with an upcaster from version 1. */
export const UserV2 = defineEvent({
  type: 'cf.user',
  version: 2,
  schema: z.object({ first: z.string().min(1), last: z.string() }),
  upcasters: {
    1: (v1) => {
      const name = String((v1 as { name?: unknown }).name ?? '');
      const [first = '', ...rest] = name.split(' ');
      return { first, last: rest.join(' ') };
    },
  },
});

const topicEvents = new Map<number, ReturnType<typeof makeTopicEvent>>();

function makeTopicEvent(i: number) {
  return defineEvent({ type: `cf.topic${i}`, schema: z.object({ topic: z.number().int(), n: z.number().int() }) });
}

/** Event `cf.topic<i>` (one destination per index). */
export function topicEvent(i: number) {
  let e = topicEvents.get(i);
  if (!e) {
    e = makeTopicEvent(i);
    topicEvents.set(i, e);
  }
  return e;
}
