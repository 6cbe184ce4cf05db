DROP TABLE aos_traces;
DROP TABLE runs;
