import { isUtf8 } from 'node:buffer';

/**
 * MQTT 3.1.1 §1.5.3 and MQTT 5 §1.5.4: a UTF-8 encoded string must be
 * well-formed (no overlong forms, no encoded surrogates U+D800..U+DFFF) and
 * must not contain U+0000; a receiver closes the connection otherwise.
 * Decoding with replacement instead would turn distinct byte strings into
 * one string (`dev-\xFF` and `dev-\xFE` both become `dev-\uFFFD`).
 *
 * Most strings on the wire are ASCII, so they are checked in a plain loop
 * and only the others pay for the native validator.
 */
export function isMqttString(buf: Buffer, start = 0, end = buf.length): boolean {
  for (let i = start; i < end; i++) {
    const byte = buf[i];
    if (byte === 0) return false;
    if (byte >= 0x80) {
      const rest = buf.subarray(i, end);
      return rest.indexOf(0) === -1 && isUtf8(rest);
    }
  }
  return true;
}
