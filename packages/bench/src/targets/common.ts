/** Helpers shared by the broker targets. */
import type { Transport } from '@busbar/core';
import { BusbarImpl } from '../busbar.js';
import type { Impl } from '../impl.js';

/**
 * Loads a Busbar transport class from its package at run time, so the bench builds and runs
 * whichever transports exist. Returns the constructor or the reason it is unavailable.
 */
export async function loadTransport<O>(pkg: string, className: string): Promise<(new (options: O) => Transport) | string> {
  try {
    const mod = (await import(pkg)) as Record<string, unknown>;
    const ctor = mod[className];
    if (typeof ctor !== 'function') return `${pkg} does not export ${className} yet`;
    return ctor as new (
      options: O,
    ) => Transport;
  } catch (e) {
    return `${pkg} cannot be loaded: ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`;
  }
}

/** Busbar over a transport class, or the skip reason. */
export function busbarOr<O>(
  ctor: (new (options: O) => Transport) | string,
  options: O,
  namespace: string,
  cleanup: (namespace: string, transport: Transport | undefined) => Promise<void>,
  description: string,
): Impl | { skip: string } {
  if (typeof ctor === 'string') return { skip: ctor };
  return new BusbarImpl({ transport: () => new ctor(options), namespace, cleanup, description });
}

/** `amqp://user:pass@host` → `amqp://***@host`. */
export function safeUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@');
}
