-- The bundled example's SQLite database; scripts/demo builds var/opt/mysite/mysite.db from it.
CREATE TABLE polls_question (id INTEGER PRIMARY KEY, question_text TEXT NOT NULL, pub_date TEXT NOT NULL);
CREATE TABLE polls_choice (id INTEGER PRIMARY KEY, question_id INTEGER REFERENCES polls_question(id),
                           choice_text TEXT NOT NULL, votes INTEGER NOT NULL DEFAULT 0);
INSERT INTO polls_question VALUES (1, 'What is up?', '2026-11-01'), (2, 'Backups tested?', '2026-11-20');
INSERT INTO polls_choice VALUES (1, 1, 'Not much', 3), (2, 1, 'The sky', 5), (3, 2, 'Yes, monthly', 8);
