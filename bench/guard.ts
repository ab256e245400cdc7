/**
 * Runs a non-node program (mosquitto) for the bench and makes sure it dies
 * with us: on SIGTERM it is asked to stop, and on any exit of this guard
 * (including the bench going away) it is killed.
 */
import { spawn } from 'node:child_process';
import { serveRpc } from './rpc.js';

const [command, ...args] = process.argv.slice(2);
if (command === undefined) {
  process.stderr.write('usage: guard.js COMMAND [ARGS...]\n');
  process.exit(2);
}
const child = spawn(command, args, { stdio: ['ignore', 'inherit', 'inherit'] });
child.on('error', (err) => {
  process.stderr.write(`guard: cannot run ${command}: ${err.message}\n`);
  process.exit(127);
});
child.on('exit', (code, signal) => {
  process.stderr.write(`guard: ${command} exited (code ${code}, signal ${signal})\n`);
  process.exit(code ?? 1);
});
process.on('exit', () => {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});
const stop = (): void => {
  child.kill('SIGTERM');
  setTimeout(() => process.exit(1), 3000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

serveRpc({ pid: () => child.pid });
