-- Schema: create, a second create refused or skipped, and what the catalog shows.
CREATE TABLE users (id INT PRIMARY KEY, name TEXT NOT NULL, score FLOAT DEFAULT 0, ok BOOL);
CREATE TABLE IF NOT EXISTS users (id INT PRIMARY KEY);
CREATE TABLE users (id INT PRIMARY KEY);
SHOW TABLES;
\d users

-- Writes: a duplicate key is an error unless the statement chooses otherwise.
INSERT INTO users VALUES (1, 'ada', 9.5, true), (2, 'bob', NULL, false), (3, 'cy', 7, NULL);
INSERT INTO users (id, name) VALUES (4, 'dee');
INSERT INTO users VALUES (1, 'again', 1, true);
INSERT INTO users VALUES (1, 'again', 1, true) ON CONFLICT DO NOTHING;
INSERT INTO users VALUES (1, 'ada2', 1, true) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name;
UPSERT INTO users VALUES (5, 'eve', 3.25, true);
INSERT INTO users (id) VALUES (6);

-- Reads.
SELECT * FROM users;
SELECT name, score FROM users WHERE id = 2;
SELECT id, name FROM users WHERE id BETWEEN 2 AND 4 ORDER BY name DESC;
SELECT id FROM users WHERE score IS NULL OR ok = false ORDER BY id LIMIT 1;
SELECT COUNT(*), MIN(score), MAX(name), SUM(id), AVG(score) FROM users;
SELECT name AS who FROM users WHERE name LIKE '%e%' ORDER BY 1;
SELECT id, score * 2 AS double FROM users WHERE id > 3 ORDER BY id DESC LIMIT 2 OFFSET 1;

-- Updates and deletes.
UPDATE users SET score = score + 1 WHERE ok;
DELETE FROM users WHERE id = 3;
SELECT * FROM users ORDER BY score DESC NULLS LAST, id;

-- Errors say what is wrong and change nothing.
SELECT nope FROM users;
SELECT * FROM missing;
SELECT * FROM users WHERE id = = 1;
UPDATE users SET name = NULL WHERE id = 1;
SELECT * FROM users JOIN users u2 ON true;
SELECT COUNT(*) FROM users;

-- Composite keys, bytes, and splitting a table's shard.
CREATE TABLE pairs (a INT, b TEXT, v BYTES, PRIMARY KEY (a, b));
INSERT INTO pairs VALUES (1, 'x', X'0001'), (1, 'y', NULL), (2, 'x', 'text'), (3, '', X'');
SELECT * FROM pairs WHERE a = 1;
ALTER TABLE pairs SPLIT AT VALUES (2), (3, 'm');
SELECT a, b FROM pairs ORDER BY a DESC, b;
UPDATE pairs SET a = a + 10;
SELECT COUNT(*), MIN(a), MAX(a) FROM pairs;

-- Raw keys, for debugging.
PUT 'debug/key' 'value\x00';
GET 'debug/key';
SCAN 'debug/' 'debug0';
PUT '/t/1/x' 'nope';

-- Drop.
DROP TABLE pairs;
DROP TABLE IF EXISTS pairs;
SHOW TABLES;
