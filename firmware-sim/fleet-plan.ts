import { resolveFleetConfig, type FleetOptions } from './fleet-config.js';

/**
 * Devices per worker process when the user does not say. One process can
 * hold about 19 990 sockets under a 20 000 descriptor limit; 15 000 keeps a
 * margin for its own descriptors and keeps one process's event loop (one
 * core at most) from being the bottleneck of the connect ramp.
 */
export const DEVICES_PER_PROCESS = 15_000;

export function defaultProcessCount(devices: number): number {
  return Math.max(1, Math.ceil(devices / DEVICES_PER_PROCESS));
}

/** `total` split into `parts` integers differing by at most one, larger first. */
function evenShares(total: number, parts: number): number[] {
  const base = Math.floor(total / parts);
  const extra = total % parts;
  return Array.from({ length: parts }, (_, i) => base + (i < extra ? 1 : 0));
}

/**
 * Splits one fleet into the options of `processes` workers: contiguous
 * device ranges (distinct startIndex, so client ids and payload device
 * indexes stay unique across processes) and a share of connectConcurrency.
 *
 * Source addresses: each worker gets the whole pool, rotated so that its
 * slot 0 continues the fleet-wide round robin. Device g of the fleet then
 * binds address g mod A whatever the number of processes, so every address
 * carries the same number of ports. Handing each worker a disjoint subset
 * would overload some addresses whenever the process count does not divide
 * the pool (3 workers over 2 addresses: one address carries two thirds),
 * and the ephemeral port range is per address, not per process.
 *
 * Explicit source ports (sourcePortStart): a worker puts at most
 * ceil(devices / A) devices on each address, so each worker gets a window of
 * that many ports, after the previous worker's, and (address, port) pairs
 * never repeat across the fleet.
 */
export function planWorkerSlices(options: FleetOptions, processes: number): FleetOptions[] {
  const config = resolveFleetConfig(options);
  const deviceShares = evenShares(config.devices, processes);
  // Every worker needs at least one connect slot, even when concurrency < processes.
  const concurrencyShares = evenShares(config.connectConcurrency, processes).map((c) => Math.max(1, c));
  const pool = config.sourceAddresses;
  const slices: FleetOptions[] = [];
  let offset = 0;
  let portWindow = 0;
  for (let i = 0; i < processes; i++) {
    const slice: FleetOptions = {
      ...options,
      devices: deviceShares[i],
      startIndex: config.startIndex + offset,
      connectConcurrency: concurrencyShares[i],
    };
    if (pool !== undefined) {
      const shift = offset % pool.length;
      slice.sourceAddresses = [...pool.slice(shift), ...pool.slice(0, shift)];
      if (config.sourcePortStart !== undefined) {
        slice.sourcePortStart = config.sourcePortStart + portWindow;
        portWindow += Math.ceil(deviceShares[i] / pool.length);
      }
    }
    slices.push(slice);
    offset += deviceShares[i];
  }
  return slices;
}
