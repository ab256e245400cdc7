import { type EndCode, EndCounts, receivedEndCode } from '../shared/end-reasons.js';
import { EdgemuxError } from '../shared/errors.js';
import { type AcceptBody, type ControlFrame, FrameType } from '../shared/frame-codec.js';
import type { Clock } from '../shared/clock.js';
import type { Logger } from '../shared/logger.js';
import { MuxStream } from '../shared/mux-stream.js';
import { type CloseIntent, graceExpired, isAttached, isDetached, isResuming, OPENED, type StreamEvent } from '../shared/stream-lifecycle.js';
import { type StreamEntry, StreamTable } from '../shared/stream-table.js';
import type { Tunnel } from '../shared/tunnel.js';
import type { DeviceConnect } from './connect-packet.js';
import type { DeviceConnection } from './device-connection.js';

export type DeviceStream = MuxStream<DeviceConnection, Tunnel>;

interface DeviceStreamEntry extends StreamEntry<DeviceConnection> {
  /** The hub holding the device's session: a stream resumes there while a tunnel to it is up (section 12). */
  hubId: string;
}

/** Where streams go: the tunnel pool's placement rule (docs/protocol.md 12). */
export interface StreamPlacement {
  pick(clientId: string, hubId?: string, onlyThatHub?: boolean): { tunnel: Tunnel; hubStreamWindow: number } | null;
  /** True while some tunnel slot is up to, or still redialling, this hub. */
  mayReach(hubId: string): boolean;
}

export interface DeviceStreamsOptions {
  placement: StreamPlacement;
  /** Window this side grants the hub on each stream. */
  streamWindow: number;
  maxPacketSize: number;
  resumeGraceMs: number;
  /** Grace periods count on it. */
  clock: Clock;
  log: Logger;
}

/** What an effect may need from the frame that caused it. */
interface FrameContext {
  accept?: AcceptBody;
  /** The peer's reason, for the device's log line. */
  reason?: string;
}

/** The agent's replay memory per stream stays bounded whatever window the hub grants. */
const MAX_STREAM_WINDOW = 16 * 1024 * 1024;

/**
 * The agent's streams: opens one per device, drives each through the
 * lifecycle (OPEN, ACCEPT, RESUME, CLOSE, grace) and carries out what it
 * says. The only place the agent sends CLOSE or RESUME.
 */
export class DeviceStreams {
  /** Streams ended since start, by why. */
  readonly ends = new EndCounts();
  private readonly table = new StreamTable<DeviceStreamEntry>('agent');
  private nextStreamId = 1;
  /** Hubs (HELLO id) that said goodbye and have not come back: none of their streams can resume. */
  private readonly departedHubs = new Set<string>();

  constructor(private readonly options: DeviceStreamsOptions) {}

  /** Streams waiting for a tunnel to resume on, RESUMEs outstanding included. */
  get detachedCount(): number {
    let detached = 0;
    for (const entry of this.table.values()) if (isDetached(entry.state)) detached++;
    return detached;
  }

  /** Streams the tunnel holds. */
  countOn(tunnel: Tunnel): number {
    return this.table.heldCount(tunnel);
  }

  /** Opens a stream for the device on the tunnel placement picks and sends its CONNECT; null when no tunnel is up. */
  open(device: DeviceConnection, connect: DeviceConnect): DeviceStream | null {
    const picked = this.options.placement.pick(connect.clientId);
    if (picked === null) return null;
    const { tunnel, hubStreamWindow } = picked;
    const id = this.allocateStreamId();
    const stream: DeviceStream = new MuxStream(id, tunnel, device, hubStreamWindow, this.options.streamWindow, this.options.maxPacketSize);
    this.table.add({ id, stream, tunnel, state: OPENED, hubId: tunnel.peerId });
    tunnel.send({
      type: FrameType.OPEN,
      streamId: id,
      body: {
        clientId: connect.clientId,
        window: this.options.streamWindow,
        keepalive: connect.keepaliveSeconds,
        protocolVersion: connect.protocolVersion,
        cleanSession: connect.cleanSession,
        ...(connect.username !== undefined ? { username: connect.username } : {}),
      },
    });
    stream.write(connect.bytes);
    return stream;
  }

  /**
   * The device connection ended. The stream and its replay buffer stay until
   * the hub confirms with its own CLOSE, so the device's last bytes survive
   * a tunnel lost in between.
   */
  deviceEnded(stream: DeviceStream, close: CloseIntent): void {
    const entry = this.table.get(stream.id);
    // A stream already let go has nothing left to close.
    if (entry === undefined || entry.stream !== stream) return;
    this.drive(entry.id, entry, entry.tunnel, { type: 'local-end', close });
  }

  /** ACCEPT and CLOSE from a hub; the agent takes them only from a tunnel holding the stream (5.1). */
  onControl(tunnel: Tunnel, frame: ControlFrame): void {
    const entry = this.table.heldOn(tunnel, frame.streamId) ?? null;
    if (frame.type === FrameType.ACCEPT) {
      if (entry !== null && isResuming(entry.state) && !entry.stream.canResumeFrom(frame.body.received)) {
        this.options.log.warn(
          { streamId: entry.id, clientId: entry.stream.sink.clientId, reason: `hub reports ${frame.body.received} received, not an offset to replay from` },
          'stream could not resume',
        );
        this.drive(frame.streamId, entry, tunnel, { type: 'resume-failed' });
        return;
      }
      this.drive(frame.streamId, entry, tunnel, { type: 'accept-received' }, { accept: frame.body });
    } else if (frame.type === FrameType.CLOSE) {
      this.drive(frame.streamId, entry, tunnel, { type: 'close-received', code: receivedEndCode(frame.body.code) }, { reason: frame.body.reason });
    }
  }

  /** A tunnel came up: it carries DATA for the streams attached to it, and detached streams may resume on it. */
  tunnelUp(tunnel: Tunnel): void {
    this.table.serve(tunnel);
    this.departedHubs.delete(tunnel.peerId);
    this.resumeDetached();
  }

  tunnelDown(tunnel: Tunnel): void {
    if (tunnel.peerGoodbye !== null) this.departedHubs.add(tunnel.peerId);
    if (this.departedHubs.has(tunnel.peerId)) {
      this.endStreamsOfDepartedHub(tunnel);
      return;
    }
    const now = this.options.clock.now();
    for (const entry of this.table.heldBy(tunnel)) this.drive(entry.id, entry, tunnel, { type: 'tunnel-lost', at: now });
    this.resumeDetached();
  }

  /** Asks the hub to continue every detached stream on a live tunnel, to the same hub where one is up (section 12). */
  resumeDetached(): void {
    for (const entry of this.table.values()) {
      if (entry.state.phase !== 'detached' && entry.state.phase !== 'closing-detached') continue;
      // While a tunnel slot is still redialling the stream's own hub, wait for
      // it: any other hub would refuse the stream and the device reconnect.
      const picked = this.options.placement.pick(entry.stream.sink.clientId!, entry.hubId, this.options.placement.mayReach(entry.hubId));
      if (picked === null) continue;
      this.drive(entry.id, entry, picked.tunnel, { type: 'resume-sent' });
    }
  }

  /** Lets go of the streams whose grace period is over (11.10). */
  sweep(now: number): void {
    for (const entry of this.table.values()) {
      if (graceExpired(entry.state, now, this.options.resumeGraceMs)) this.drive(entry.id, entry, entry.tunnel, { type: 'grace-expired' });
    }
  }

  /**
   * The hub said goodbye: it has ended every session it held for this agent,
   * so the devices are closed now rather than after the resume grace period,
   * and reconnect (to another hub, or to this one when it is back). Streams
   * riding the hub's other tunnels end when those close, behind their own
   * GOODBYE, so the broker's last packets on them still reach the devices.
   */
  private endStreamsOfDepartedHub(tunnel: Tunnel): void {
    let ended = 0;
    for (const entry of this.table.values()) {
      if (entry.hubId === tunnel.peerId && (isDetached(entry.state) || (entry.tunnel === tunnel && isAttached(entry.state)))) {
        this.drive(entry.id, entry, entry.tunnel, { type: 'abandon', code: 'peer-departed' }, { reason: `hub ${tunnel.peerId} said goodbye` });
        ended++;
      } else if (entry.tunnel === tunnel) {
        // A stream of another hub that was asking to resume here asks again elsewhere.
        this.drive(entry.id, entry, tunnel, { type: 'tunnel-lost', at: this.options.clock.now() });
      }
    }
    if (ended > 0) this.options.log.info({ hubId: tunnel.peerId, streams: ended, reason: 'peer-departed' }, 'closing the devices of a departed hub');
    this.resumeDetached();
  }

  /** Runs one lifecycle event and carries out its effects, in order. */
  private drive(streamId: number, entry: DeviceStreamEntry | null, tunnel: Tunnel | null, event: StreamEvent, context: FrameContext = {}): void {
    const effects = entry === null ? this.table.stepForgotten(event) : this.table.step(entry, event, tunnel);
    for (const effect of effects) {
      switch (effect.type) {
        case 'send-close':
          tunnel?.send({ type: FrameType.CLOSE, streamId, body: { code: effect.close.code, reason: effect.close.reason, abrupt: effect.close.abrupt } });
          break;
        case 'send-resume': {
          const stream = entry!.stream;
          tunnel!.send({
            type: FrameType.RESUME,
            streamId,
            body: { clientId: stream.sink.clientId!, window: this.options.streamWindow, received: stream.receivedOffset, attempt: effect.attempt },
          });
          break;
        }
        case 'detach':
          entry!.stream.detach();
          break;
        case 'attach':
          entry!.hubId = tunnel!.peerId;
          entry!.stream.attach(tunnel!, context.accept!.received, Math.min(context.accept!.window, MAX_STREAM_WINDOW));
          break;
        case 'set-window':
          entry!.stream.setPeerWindow(Math.min(context.accept!.window, MAX_STREAM_WINDOW));
          break;
        case 'end-local':
          this.endDevice(entry!.stream.sink, effect.code, context.reason);
          break;
        case 'forget':
          this.ends.add(effect.code);
          entry!.stream.close();
          break;
        case 'send-accept':
          throw new EdgemuxError('E_STREAM_LIFECYCLE', 'the agent never accepts a stream');
      }
    }
  }

  /** Past the grace period the device must reconnect; a departed hub's devices are told the server is shutting down. */
  private endDevice(device: DeviceConnection, code: EndCode, reason: string | undefined): void {
    if (code === 'grace-expired' || code === 'resume-failed') device.resumeExpired(code);
    else device.closeFromHub(code, reason ?? code, code === 'peer-departed');
  }

  private allocateStreamId(): number {
    const id = this.nextStreamId;
    // Agent-opened streams are odd (hub-opened ones would be even); wrap before u32 overflow.
    this.nextStreamId = this.nextStreamId >= 0xffff_fffd ? 1 : this.nextStreamId + 2;
    return id;
  }
}
