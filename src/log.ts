/**
 * A small leveled logger writing one line per event to stderr. Nothing on
 * the per-packet path logs: drops are counted, not printed. Never pass key
 * material or packet payloads to it.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export function createLogger(
  level: LogLevel = 'info',
  write: (line: string) => void = (l) => process.stderr.write(l + '\n'),
): Logger {
  const min = ORDER[level];
  const at = (lvl: LogLevel) => (msg: string) => {
    if (ORDER[lvl] >= min) write(`${new Date().toISOString()} ${lvl.padEnd(5)} ${msg}`);
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export const silentLogger: Logger = createLogger('silent');
