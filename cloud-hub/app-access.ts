import net from 'node:net';
import type { PasswordFile } from './password-file.js';

/** CONNACK return codes an application can be refused with (MQTT 3.1.1 §3.2.2.3). */
export const AppRefusalCode = {
  IDENTIFIER_REJECTED: 2,
  SERVER_UNAVAILABLE: 3,
  BAD_USERNAME_OR_PASSWORD: 4,
  NOT_AUTHORIZED: 5,
} as const;

export interface AppRefusal {
  returnCode: (typeof AppRefusalCode)[keyof typeof AppRefusalCode];
  reason: string;
}

const LOOPBACK = new net.BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** 127.0.0.0/8, ::1 (in any spelling, also IPv4-mapped) and `localhost`: reachable only from this machine. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (bare === 'localhost') return true;
  const family = net.isIP(bare);
  return family !== 0 && LOOPBACK.check(bare, family === 4 ? 'ipv4' : 'ipv6');
}

/**
 * Whether clients without credentials get in, as Mosquitto 2.x decides it:
 * on loopback with no password file, yes (its local-only mode); otherwise
 * only when `allowAnonymous` says so. Returns a problem to report instead
 * when the settings would leave the port open to anyone who reaches it, or
 * closed to everyone.
 */
export function anonymousAccess(settings: {
  host: string;
  passwordFile: boolean;
  allowAnonymous: boolean | undefined;
}): { allow: boolean } | { problem: string; key: 'host' | 'allowAnonymous' } {
  if (settings.allowAnonymous !== undefined) {
    if (!settings.allowAnonymous && !settings.passwordFile) {
      return { key: 'allowAnonymous', problem: 'false with no passwordFile refuses every application: set app.passwordFile' };
    }
    return { allow: settings.allowAnonymous };
  }
  if (settings.passwordFile) return { allow: false };
  if (isLoopbackHost(settings.host)) return { allow: true };
  return {
    key: 'host',
    problem:
      'the application port listens beyond loopback without authentication: set app.passwordFile (a mosquitto_passwd file), ' +
      'or app.allowAnonymous: true to let anyone who reaches it read and publish every topic',
  };
}

/**
 * Who may connect on the application port: credentials first, then the
 * client ID, so a stranger cannot learn which device IDs exist by trying them.
 * A device's client ID is refused because connecting with it would take over
 * the device's session at the broker (MQTT 3.1.1 §3.1.4): its subscriptions,
 * its queued commands, and the device's own connection.
 */
export class AppAccess {
  constructor(
    private readonly options: {
      passwords: PasswordFile | null;
      allowAnonymous: boolean;
      /** True for a client ID a device uses or has used through a tunnel. */
      isDeviceClientId: (clientId: string) => boolean;
    },
  ) {}

  async admit(clientId: string, username: string | undefined, password: Buffer | undefined): Promise<AppRefusal | null> {
    const { passwords, allowAnonymous } = this.options;
    if (username === undefined) {
      if (!allowAnonymous) return { returnCode: AppRefusalCode.NOT_AUTHORIZED, reason: 'no credentials' };
    } else if (passwords !== null && !(await passwords.verify(username, password))) {
      return { returnCode: AppRefusalCode.BAD_USERNAME_OR_PASSWORD, reason: 'bad user name or password' };
    }
    if (this.options.isDeviceClientId(clientId)) {
      return { returnCode: AppRefusalCode.IDENTIFIER_REJECTED, reason: 'client ID belongs to a device' };
    }
    return null;
  }
}
