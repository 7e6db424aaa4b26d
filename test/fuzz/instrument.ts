/**
 * Edge instrumentation of compiled JavaScript, for the coverage-guided
 * fuzzer: a counter increment (`__fz[i]++`) at every place control can
 * branch to, inserted as text at positions found with the TypeScript
 * compiler's parser (no newline is added, so stack traces keep their line
 * numbers):
 *
 *   - the start of every function body (an expression body is wrapped);
 *   - both arms of `if` (an `if` without `else` gets an empty counting one),
 *     of `?:`, and the right operand of `&&`, `||`, `??` and their
 *     assignment forms;
 *   - every `case` / `default` clause, loop body, `catch` and `finally`.
 *
 * Counters are bytes that wrap like AFL's; the engine buckets them. The
 * integer and short string literals of the file are returned as a
 * dictionary for the mutator (AFL's auto-dictionary): magic numbers and
 * tags that random bytes would almost never hit.
 */
import ts from 'typescript';

export interface Instrumented {
  code: string;
  /** Number of counters (the `__fz` array's length). */
  counters: number;
  /** Byte strings of the file's literals (big- and little-endian integers, strings). */
  dictionary: Buffer[];
}

interface Insertion {
  pos: number;
  text: string;
  /** Closing insertions go before opening ones at the same position. */
  close: boolean;
  depth: number;
}

const MAX_DICTIONARY = 96;

export function instrument(code: string, fileName: string, counterName = '__fz'): Instrumented {
  const sf = ts.createSourceFile(fileName, code, ts.ScriptTarget.Latest, true, ts.ScriptKind.JS);
  const ins: Insertion[] = [];
  let n = 0;
  const counter = (): string => `${counterName}[${n++}]++`;
  const dict = new Map<string, Buffer>();

  /** A counter as the first statement of a block. */
  const atBlockStart = (b: ts.Block, depth: number) => {
    ins.push({ pos: b.getStart(sf) + 1, text: `${counter()};`, close: false, depth });
  };
  /** A counter before a statement that is not a block: wrap it in braces. */
  const aroundStatement = (s: ts.Statement, depth: number) => {
    if (ts.isBlock(s)) {
      atBlockStart(s, depth);
      return;
    }
    ins.push({ pos: s.getStart(sf), text: `{${counter()};`, close: false, depth });
    ins.push({ pos: s.end, text: '}', close: true, depth });
  };
  /** A counter before an expression: `(__fz[i]++, e)`. */
  const aroundExpression = (e: ts.Expression, depth: number) => {
    ins.push({ pos: e.getStart(sf), text: `(${counter()}, `, close: false, depth });
    ins.push({ pos: e.end, text: ')', close: true, depth });
  };
  const literal = (node: ts.Node) => {
    if (dict.size >= MAX_DICTIONARY) return;
    if (ts.isNumericLiteral(node)) {
      const v = Number(node.text);
      if (!Number.isInteger(v) || v < 2 || v > 0xffffffff) return;
      const be = v < 0x100 ? 1 : v < 0x10000 ? 2 : 4;
      const b = Buffer.alloc(be);
      b.writeUIntBE(v, 0, be);
      dict.set(b.toString('hex'), b);
      if (be > 1) {
        const le = Buffer.from(b).reverse();
        dict.set(le.toString('hex'), le);
      }
    } else if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) {
      const s = node.text;
      if (s.length >= 2 && s.length <= 32 && /^[\x20-\x7e]*$/.test(s)) {
        dict.set(Buffer.from(s).toString('hex'), Buffer.from(s));
      }
    }
  };

  const visit = (node: ts.Node, depth: number): void => {
    literal(node);
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const body = node.body as ts.Node;
      if (ts.isBlock(body)) atBlockStart(body, depth);
      else if (ts.isArrowFunction(node)) aroundExpression(body as ts.Expression, depth);
    } else if (ts.isIfStatement(node)) {
      aroundStatement(node.thenStatement, depth);
      if (node.elseStatement) aroundStatement(node.elseStatement, depth);
      // After the then-arm's closing brace (depth), before an enclosing one (depth - 1).
      else
        ins.push({ pos: node.end, text: ` else {${counter()};}`, close: true, depth: depth - 0.5 });
    } else if (ts.isConditionalExpression(node)) {
      aroundExpression(node.whenTrue, depth);
      aroundExpression(node.whenFalse, depth);
    } else if (ts.isBinaryExpression(node)) {
      const k = node.operatorToken.kind;
      if (
        k === ts.SyntaxKind.AmpersandAmpersandToken ||
        k === ts.SyntaxKind.BarBarToken ||
        k === ts.SyntaxKind.QuestionQuestionToken ||
        k === ts.SyntaxKind.AmpersandAmpersandEqualsToken ||
        k === ts.SyntaxKind.BarBarEqualsToken ||
        k === ts.SyntaxKind.QuestionQuestionEqualsToken
      ) {
        aroundExpression(node.right, depth);
      }
    } else if (ts.isCaseClause(node) || ts.isDefaultClause(node)) {
      const first = node.statements[0];
      if (first) ins.push({ pos: first.getStart(sf), text: `${counter()};`, close: false, depth });
    } else if (ts.isIterationStatement(node, false)) {
      aroundStatement(node.statement, depth);
    } else if (ts.isCatchClause(node)) {
      atBlockStart(node.block, depth);
    } else if (ts.isTryStatement(node) && node.finallyBlock) {
      atBlockStart(node.finallyBlock, depth);
    }
    ts.forEachChild(node, (child) => visit(child, depth + 1));
  };
  visit(sf, 0);

  // Apply from the end. At one position: closings (innermost first), then
  // openings (outermost first), so that wrapped spans nest properly.
  ins.sort((a, b) => {
    if (a.pos !== b.pos) return b.pos - a.pos;
    if (a.close !== b.close) return a.close ? 1 : -1; // reversed: applied last = leftmost
    return a.close ? a.depth - b.depth : b.depth - a.depth;
  });
  let out = code;
  for (const i of ins) out = out.slice(0, i.pos) + i.text + out.slice(i.pos);
  return { code: out, counters: n, dictionary: [...dict.values()] };
}
