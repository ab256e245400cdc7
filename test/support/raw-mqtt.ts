import net from 'node:net';
import mqttPacket from 'mqtt-packet';

/** A device socket speaking MQTT bytes directly, for what MQTT.js will not send; `received` collects every chunk. */
export async function rawDevice(port: number): Promise<{ socket: net.Socket; received: Buffer[]; closed: Promise<void> }> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const received: Buffer[] = [];
  socket.on('data', (chunk) => received.push(chunk));
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { socket, received, closed };
}

/** As `rawDevice`, with `received()` giving every byte so far as one buffer. */
export async function rawDeviceBytes(port: number): Promise<{ socket: net.Socket; received: () => Buffer; closed: Promise<void> }> {
  const { socket, received, closed } = await rawDevice(port);
  return { socket, received: () => Buffer.concat(received), closed };
}

/** A clean MQTT 3.1.1 CONNECT with a 30 s keepalive. */
export function connectPacket(clientId: string): Buffer {
  return mqttPacket.generate({ cmd: 'connect', clientId, clean: true, keepalive: 30, protocolVersion: 4 });
}
