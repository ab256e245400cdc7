import { chmodSync, closeSync, openSync } from 'node:fs';
import Database from 'better-sqlite3';

/** Owner read and write only, as Mosquitto keeps its persistence file: sessions and queued messages are private. */
const STATE_FILE_MODE = 0o600;

/**
 * Opens (creating when absent) a SQLite state file readable by its owner
 * only. SQLite gives its -wal and -shm files the database file's mode, so
 * making the file first is enough; an existing file is tightened, since a
 * looser mode from an older version would keep leaking.
 */
export function openStateFile(path: string): Database.Database {
  if (path !== ':memory:' && path !== '') {
    closeSync(openSync(path, 'a', STATE_FILE_MODE));
    chmodSync(path, STATE_FILE_MODE);
  }
  return new Database(path);
}
