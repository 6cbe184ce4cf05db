DROP TABLE prediction_events;
DROP TABLE pattern_feedback;
