import type { z } from 'zod';
import { ConfigError } from './errors.js';

/**
 * Converts data of schema version `n` into version `n + 1`. Receives untrusted, already
 * JSON-decoded data; the result is validated against the current schema afterwards (or passed to
 * the next upcaster).
 */
export type Upcaster = (data: unknown) => unknown;

/** Upcasters keyed by the version they upgrade *from*: `{ 1: v1 => v2, 2: v2 => v3 }`. */
export type Upcasters = Readonly<Record<number, Upcaster>>;

/** Definition of an event type: a name, a schema version and a zod schema. */
export interface EventDefinition<TSchema extends z.ZodType = z.ZodType> {
  /** CloudEvents `type`, e.g. `user.created`: lower-case letters, digits, `.`, `-`, `_`. */
  readonly type: string;
  /** Current schema version (integer ≥ 1), carried in every envelope. */
  readonly version: number;
  /** The zod schema of the current version. Validated on publish and on consume. */
  readonly schema: TSchema;
  /** Upcasters from older versions (see {@link Upcasters}). Default: none. */
  readonly upcasters: Upcasters;
}

/** The data type of an event (the schema's output). */
export type EventData<E extends EventDefinition> = z.output<E['schema']>;
/** The input type accepted by `publish` (the schema's input). */
export type EventInput<E extends EventDefinition> = z.input<E['schema']>;

/** Options of {@link defineEvent}. */
export interface DefineEventOptions<TSchema extends z.ZodType> {
  /** See {@link EventDefinition.type}. */
  type: string;
  /** See {@link EventDefinition.version}. Default `1`. */
  version?: number;
  /** See {@link EventDefinition.schema}. */
  schema: TSchema;
  /** See {@link EventDefinition.upcasters}. Default `{}`. */
  upcasters?: Upcasters;
}

const EVENT_TYPE = /^[a-z0-9][a-z0-9._-]{0,127}$/;

/**
 * Defines a typed event.
 *
 * ```ts
 * const UserCreated = defineEvent({
 *   type: 'user.created',
 *   version: 2,
 *   schema: z.object({ id: z.string(), email: z.email(), name: z.string() }),
 *   upcasters: { 1: (v1) => ({ ...(v1 as object), name: '' }) },
 * });
 * ```
 *
 * @throws ConfigError for an invalid type name or version, or upcasters for versions ≥ `version`.
 */
export function defineEvent<TSchema extends z.ZodType>(options: DefineEventOptions<TSchema>): EventDefinition<TSchema> {
  const version = options.version ?? 1;
  if (!EVENT_TYPE.test(options.type)) {
    throw new ConfigError(`event type "${options.type}" must match ${EVENT_TYPE.source} (lower-case letters, digits, ".", "-", "_")`);
  }
  if (!Number.isInteger(version) || version < 1) {
    throw new ConfigError(`event "${options.type}": version must be an integer ≥ 1, got ${version}`);
  }
  const upcasters = options.upcasters ?? {};
  for (const from of Object.keys(upcasters)) {
    const n = Number(from);
    if (!Number.isInteger(n) || n < 1 || n >= version) {
      throw new ConfigError(`event "${options.type}": upcaster from version ${from} must be in 1..${version - 1}`);
    }
  }
  return Object.freeze({ type: options.type, version, schema: options.schema, upcasters: Object.freeze({ ...upcasters }) });
}
