import mqtt, { type MqttClient } from 'mqtt';
import { LatencyHistogram } from './latency-histogram.js';
import { SequenceChecker } from './sequence-checker.js';
import { decodeTelemetry, encodeTelemetry, nowMs } from './telemetry-payload.js';

export interface CloudAppOptions {
  host: string;
  port: number;
  clientId?: string;
  /** Subscription for device telemetry. */
  telemetryFilter?: string;
  /** Subscription for replies to commands. */
  replyFilter?: string;
  qos?: 0 | 1 | 2;
}

export interface CloudAppStats {
  delivered: number;
  duplicates: number;
  outOfOrder: number;
  gaps: number;
  commandsSent: number;
  repliesReceived: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
}

/**
 * A cloud application on the broker side (MQTT.js, as a real one would be):
 * consumes device telemetry, checks every sequence, measures end-to-end
 * latency and sends commands back to devices.
 */
export class CloudApp {
  readonly latency = new LatencyHistogram();
  readonly sequences = new SequenceChecker();
  commandsSent = 0;
  repliesReceived = 0;
  private commandSeq = 0;

  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
  }

  static async connect(options: CloudAppOptions): Promise<CloudApp> {
    const client = mqtt.connect({
      host: options.host,
      port: options.port,
      clientId: options.clientId ?? `cloud-app-${process.pid}`,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      clean: true,
    });
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
    });
    const app = new CloudApp(client);
    const qos = options.qos ?? 1;
    await client.subscribeAsync(
      { [options.telemetryFilter ?? 'devices/+/telemetry']: { qos }, [options.replyFilter ?? 'devices/+/replies']: { qos } },
    );
    return app;
  }

  /** Sends one command to a device's command topic; its reply is counted when it comes back. */
  sendCommand(clientId: string, topicTemplate = 'devices/{id}/commands'): void {
    this.commandSeq++;
    this.commandsSent++;
    this.client.publish(topicTemplate.replaceAll('{id}', clientId), encodeTelemetry(0, this.commandSeq, nowMs(), 16), { qos: 1 });
  }

  stats(): CloudAppStats {
    return {
      delivered: this.sequences.delivered,
      duplicates: this.sequences.duplicates,
      outOfOrder: this.sequences.outOfOrder,
      gaps: this.sequences.gaps,
      commandsSent: this.commandsSent,
      repliesReceived: this.repliesReceived,
      p50Ms: round(this.latency.percentile(50)),
      p99Ms: round(this.latency.percentile(99)),
      p999Ms: round(this.latency.percentile(99.9)),
    };
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }

  private onMessage(topic: string, payload: Buffer): void {
    if (topic.endsWith('/replies')) {
      this.repliesReceived++;
      return;
    }
    const record = decodeTelemetry(payload);
    if (record === null) return;
    this.latency.record(nowMs() - record.sentAtMs);
    this.sequences.record(record.deviceIndex, record.seq);
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
