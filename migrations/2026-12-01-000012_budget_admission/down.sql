DROP TABLE budget_reservations;
DROP TABLE budget_counters;
