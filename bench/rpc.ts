/**
 * Request/response over the IPC channel of a forked bench process. The child
 * serves named handlers; the parent calls them with a deadline, so no call
 * can hang the run.
 */

export interface RpcRequest {
  rpc: 'call';
  id: number;
  method: string;
  params: unknown;
}

export interface RpcResponse {
  rpc: 'result';
  id: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type RpcHandlers = Record<string, (params: any) => unknown>;

function isRequest(message: unknown): message is RpcRequest {
  return typeof message === 'object' && message !== null && (message as RpcRequest).rpc === 'call';
}

/**
 * Child side. The process exits when its parent goes away (the IPC channel
 * closes), so a crashed or killed orchestrator never leaves load behind.
 */
export function serveRpc(handlers: RpcHandlers): void {
  if (process.send === undefined) {
    process.stderr.write('this bench process must be started by bench/run.js (no IPC channel)\n');
    process.exit(2);
  }
  process.on('disconnect', () => process.exit(0));
  process.on('message', (message: unknown) => {
    if (!isRequest(message)) return;
    const { id, method, params } = message;
    const reply = (response: Omit<RpcResponse, 'rpc' | 'id'>): void => {
      if (process.connected) process.send!({ rpc: 'result', id, ...response });
    };
    const handler = handlers[method];
    if (handler === undefined) {
      reply({ ok: false, error: `unknown method ${method}` });
      return;
    }
    Promise.resolve()
      .then(() => handler(params))
      .then(
        (result) => reply({ ok: true, result }),
        (err: unknown) => reply({ ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
      );
  });
  process.send({ rpc: 'ready' });
}
