/**
 * Typed errors with stable codes, so callers and tests match on the kind of
 * failure rather than on message text.
 */
export type EdgemuxErrorCode =
  | 'E_MQTT_BAD_REMAINING_LENGTH'
  | 'E_MQTT_PACKET_TOO_LARGE'
  | 'E_MQTT_BAD_PACKET_TYPE'
  | 'E_MQTT_MALFORMED'
  | 'E_MQTT_PROTOCOL'
  | 'E_FRAME_TOO_LARGE'
  | 'E_FRAME_BAD_TYPE'
  | 'E_FRAME_MALFORMED'
  | 'E_STREAM_PROTOCOL'
  | 'E_STREAM_LIFECYCLE'
  | 'E_TUNNEL_PROTOCOL'
  | 'E_TUNNEL_AUTH'
  | 'E_ENROLL_BAD_REQUEST'
  | 'E_ENROLL_REFUSED'
  | 'E_ENROLL_TRANSPORT'
  | 'E_PKI_STORE'
  | 'E_CONFIG'
  | 'E_PERSISTENCE_NOT_FOUND'
  | 'E_PERSISTENCE_CLOSED'
  | 'E_REGISTRY_CLOSED'
  | 'E_REGISTRY_FLUSH';

export class EdgemuxError extends Error {
  readonly code: EdgemuxErrorCode;

  constructor(code: EdgemuxErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EdgemuxError';
    this.code = code;
  }
}

export function isEdgemuxError(err: unknown, code?: EdgemuxErrorCode): err is EdgemuxError {
  return err instanceof EdgemuxError && (code === undefined || err.code === code);
}

/**
 * Errors a peer's bytes cause: a malformed frame, MQTT packet or stream
 * offset. They close the connection they came on; any other error is a bug
 * and is not passed off as bad input.
 */
export function isBadInput(err: unknown): err is EdgemuxError {
  return isEdgemuxError(err) && /^E_(MQTT|FRAME)_|^E_STREAM_PROTOCOL$|^E_TUNNEL_PROTOCOL$/.test(err.code);
}
