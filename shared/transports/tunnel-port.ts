/**
 * How one tunnel port tells its transports apart: by the ALPN protocol the
 * agent offers in its TLS ClientHello (docs/protocol.md, section 2.2).
 */
export const ALPN_TUNNEL = 'edgemux/1';
/** WebSocket over TLS: HTTP/1.1 on the same port, upgraded on DEFAULT_WS_PATH. */
export const ALPN_HTTP = 'http/1.1';
export const DEFAULT_WS_PATH = '/edgemux/v1/tunnel';
