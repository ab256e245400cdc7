import net from 'node:net';
import { FleetConfigError } from './fleet-config.js';

/**
 * Devices planned per source address. Linux hands out 28 232 ephemeral ports
 * per local address by default (32768–60999); 20 000 leaves room for sockets
 * still in TIME_WAIT from an earlier run and for other programs.
 */
export const DEVICES_PER_SOURCE_ADDRESS = 20_000;

/** 127.0.0.1 stays free for the broker and everything else on the host. */
const DEFAULT_POOL_FIRST = '127.0.0.2';
/** A typo such as 127.0.0.2-127.9.0.0 should fail, not allocate millions of strings. */
const MAX_RANGE_ADDRESSES = 65_536;

function badSpec(message: string): FleetConfigError {
  return new FleetConfigError('sourceAddresses', `sourceAddresses: ${message}`);
}

function ipv4ToNumber(address: string): number {
  return address.split('.').reduce((n, octet) => n * 256 + Number(octet), 0);
}

function numberToIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff].join('.');
}

function expandRange(item: string): string[] {
  const [first, last] = item.split('-').map((a) => a.trim());
  if (!net.isIPv4(first) || !net.isIPv4(last)) {
    throw badSpec(`a range must be two IPv4 addresses, as in 127.0.0.2-127.0.0.9 (got '${item}')`);
  }
  const from = ipv4ToNumber(first);
  const to = ipv4ToNumber(last);
  if (to < from) throw badSpec(`range ends before it starts (got '${item}')`);
  if (to - from + 1 > MAX_RANGE_ADDRESSES) {
    throw badSpec(`range holds more than ${MAX_RANGE_ADDRESSES} addresses (got '${item}')`);
  }
  return Array.from({ length: to - from + 1 }, (_, i) => numberToIpv4(from + i));
}

/**
 * Parses `a,b,c`, `first-last` (IPv4, inclusive) or a mix of both, e.g.
 * `127.0.0.2-127.0.0.9,10.0.0.5`. Duplicates are refused: they would
 * silently double the load on one address's port range.
 */
export function parseSourceAddresses(spec: string): string[] {
  const addresses: string[] = [];
  for (const raw of spec.split(',')) {
    const item = raw.trim();
    if (item === '') continue;
    if (item.includes('-')) addresses.push(...expandRange(item));
    else if (net.isIP(item) !== 0) addresses.push(item);
    else throw badSpec(`'${item}' is not an IP address or an IPv4 range`);
  }
  if (addresses.length === 0) throw badSpec(`no addresses in '${spec}'`);
  const seen = new Set<string>();
  for (const address of addresses) {
    if (seen.has(address)) throw badSpec(`${address} is listed twice`);
    seen.add(address);
  }
  return addresses;
}

/** True for 127.0.0.0/8: every address in it reaches a server listening on 127.0.0.1. */
export function isIpv4Loopback(host: string): boolean {
  return net.isIPv4(host) && host.startsWith('127.');
}

/**
 * The automatic pool for a fleet that would need more than one address's
 * share of ports: 127.0.0.2 upward, one address per DEVICES_PER_SOURCE_ADDRESS
 * devices. Null when one address suffices.
 */
export function defaultSourcePool(devices: number): string[] | null {
  if (devices <= DEVICES_PER_SOURCE_ADDRESS) return null;
  const count = Math.ceil(devices / DEVICES_PER_SOURCE_ADDRESS);
  const first = ipv4ToNumber(DEFAULT_POOL_FIRST);
  return Array.from({ length: count }, (_, i) => numberToIpv4(first + i));
}

/** Devices each address carries when `devices` are spread round robin over `addresses`. */
export function devicesPerAddress(devices: number, addresses: number): number {
  return Math.ceil(devices / Math.max(1, addresses));
}
