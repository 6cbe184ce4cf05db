// @generated automatically by Diesel CLI.

diesel::table! {
    aos_traces (id) {
        id -> Uuid,
        #[max_length = 64]
        trace_id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    budget_counters (tenant_id, budget_id, period, window_start) {
        #[max_length = 64]
        budget_id -> Varchar,
        #[max_length = 8]
        period -> Varchar,
        window_start -> Date,
        spent_cents -> Numeric,
        reserved_cents -> Numeric,
        updated_at -> Timestamptz,
        #[max_length = 64]
        tenant_id -> Varchar,
    }
}

diesel::table! {
    budget_reservations (tenant_id, id) {
        #[max_length = 64]
        id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 64]
        request_id -> Varchar,
        #[max_length = 128]
        feature_tag -> Nullable<Varchar>,
        #[max_length = 64]
        user_id -> Nullable<Varchar>,
        estimated_cents -> Numeric,
        budget_ids -> Array<Nullable<Text>>,
        day -> Date,
        month -> Date,
        #[max_length = 16]
        status -> Varchar,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
        closed_at -> Nullable<Timestamptz>,
        actual_cents -> Nullable<Float8>,
        #[max_length = 64]
        cost_record_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    coordination_audit_records (audit_id) {
        audit_id -> Uuid,
        #[max_length = 100]
        envelope_id -> Varchar,
        #[max_length = 20]
        envelope_class -> Varchar,
        #[max_length = 20]
        decision -> Varchar,
        reason -> Text,
        decision_timestamp -> Timestamptz,
        created_at -> Timestamptz,
        #[max_length = 100]
        conflicting_envelope_id -> Nullable<Varchar>,
        #[max_length = 100]
        preempting_envelope_id -> Nullable<Varchar>,
        active_envelopes_count -> Int4,
        #[max_length = 100]
        tenant_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    cost_anomalies (tenant_id, id) {
        #[max_length = 64]
        id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 32]
        anomaly_type -> Varchar,
        #[max_length = 16]
        severity -> Varchar,
        #[max_length = 32]
        entity_type -> Varchar,
        #[max_length = 128]
        entity_id -> Nullable<Varchar>,
        current_value_cents -> Float8,
        expected_value_cents -> Float8,
        deviation_pct -> Float8,
        threshold_pct -> Float8,
        message -> Text,
        #[max_length = 64]
        incident_id -> Nullable<Varchar>,
        #[max_length = 64]
        action_taken -> Nullable<Varchar>,
        resolved -> Bool,
        resolved_at -> Nullable<Timestamptz>,
        metadata -> Nullable<Jsonb>,
        detected_at -> Timestamptz,
        #[max_length = 64]
        snapshot_id -> Nullable<Varchar>,
        #[max_length = 64]
        baseline_id -> Nullable<Varchar>,
        #[max_length = 32]
        derived_cause -> Nullable<Varchar>,
        breach_count -> Nullable<Int4>,
    }
}

diesel::table! {
    cost_breach_history (tenant_id, id) {
        #[max_length = 32]
        id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 32]
        entity_type -> Varchar,
        #[max_length = 128]
        entity_id -> Nullable<Varchar>,
        #[max_length = 32]
        breach_type -> Varchar,
        breach_date -> Date,
        deviation_pct -> Float8,
        current_value_cents -> Float8,
        baseline_value_cents -> Float8,
        created_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    cost_budgets (tenant_id, id) {
        #[max_length = 64]
        id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 32]
        budget_type -> Varchar,
        #[max_length = 128]
        entity_id -> Nullable<Varchar>,
        daily_limit_cents -> Nullable<Int4>,
        monthly_limit_cents -> Nullable<Int4>,
        warn_threshold_pct -> Int4,
        hard_limit_enabled -> Bool,
        is_active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    cost_drift_tracking (tenant_id, id) {
        #[max_length = 32]
        id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 32]
        entity_type -> Varchar,
        #[max_length = 128]
        entity_id -> Nullable<Varchar>,
        rolling_7d_avg_cents -> Float8,
        baseline_7d_avg_cents -> Float8,
        drift_pct -> Float8,
        drift_days_count -> Int4,
        first_drift_date -> Date,
        last_check_date -> Date,
        is_active -> Bool,
        created_at -> Nullable<Timestamptz>,
        updated_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    cost_record_retention (one) {
        one -> Bool,
        retired_before -> Timestamptz,
    }
}

diesel::table! {
    cost_records (tenant_id, created_at, id) {
        #[max_length = 64]
        id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 64]
        user_id -> Nullable<Varchar>,
        #[max_length = 128]
        feature_tag -> Nullable<Varchar>,
        #[max_length = 64]
        request_id -> Nullable<Varchar>,
        #[max_length = 64]
        workflow_id -> Nullable<Varchar>,
        #[max_length = 64]
        skill_id -> Nullable<Varchar>,
        #[max_length = 64]
        model -> Varchar,
        input_tokens -> Int4,
        output_tokens -> Int4,
        cost_cents -> Float8,
        created_at -> Timestamptz,
        is_retry -> Bool,
    }
}

diesel::table! {
    cost_request_keys (tenant_id, request_id) {
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 64]
        request_id -> Varchar,
        #[max_length = 64]
        record_id -> Varchar,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    cost_rollup_daily (tenant_id, day, feature_tag, user_id, slot) {
        #[max_length = 64]
        tenant_id -> Varchar,
        day -> Date,
        #[max_length = 128]
        feature_tag -> Varchar,
        #[max_length = 64]
        user_id -> Varchar,
        slot -> Int2,
        requests -> Int8,
        retries -> Int8,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cost_cents -> Float8,
    }
}

diesel::table! {
    cost_rollup_hourly (tenant_id, bucket_hour, model, feature_tag, slot) {
        #[max_length = 64]
        tenant_id -> Varchar,
        bucket_hour -> Timestamptz,
        #[max_length = 64]
        model -> Varchar,
        #[max_length = 128]
        feature_tag -> Varchar,
        slot -> Int2,
        requests -> Int8,
        retries -> Int8,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cost_cents -> Float8,
    }
}

diesel::table! {
    costsim_alert_queue (id) {
        id -> Int8,
        payload -> Jsonb,
        alert_type -> Nullable<Text>,
        circuit_breaker_name -> Nullable<Text>,
        incident_id -> Nullable<Text>,
        attempts -> Int4,
        max_attempts -> Int4,
        last_attempt_at -> Nullable<Timestamptz>,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        status -> Text,
        created_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        claim_token -> Nullable<Uuid>,
        #[max_length = 64]
        tenant_id -> Nullable<Varchar>,
        #[max_length = 64]
        anomaly_id -> Nullable<Varchar>,
    }
}

diesel::table! {
    costsim_cb_incidents (id) {
        id -> Text,
        circuit_breaker_name -> Text,
        timestamp -> Timestamptz,
        reason -> Text,
        severity -> Text,
        drift_score -> Nullable<Float8>,
        sample_count -> Nullable<Int4>,
        details_json -> Nullable<Text>,
        resolved -> Bool,
        resolved_at -> Nullable<Timestamptz>,
        resolved_by -> Nullable<Text>,
        resolution_notes -> Nullable<Text>,
        alert_sent -> Bool,
        alert_sent_at -> Nullable<Timestamptz>,
        alert_response -> Nullable<Text>,
    }
}

diesel::table! {
    costsim_provenance (id) {
        id -> Int8,
        run_id -> Nullable<Text>,
        tenant_id -> Nullable<Text>,
        variant_slug -> Nullable<Text>,
        source -> Nullable<Text>,
        model_version -> Nullable<Text>,
        adapter_version -> Nullable<Text>,
        commit_sha -> Nullable<Text>,
        input_hash -> Nullable<Text>,
        output_hash -> Nullable<Text>,
        v1_cost -> Nullable<Float8>,
        v2_cost -> Nullable<Float8>,
        cost_delta -> Nullable<Float8>,
        payload -> Nullable<Jsonb>,
        runtime_ms -> Nullable<Int4>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    feature_tags (tenant_id, id) {
        #[max_length = 64]
        id -> Varchar,
        #[max_length = 64]
        tenant_id -> Varchar,
        #[max_length = 128]
        tag -> Varchar,
        #[max_length = 256]
        display_name -> Varchar,
        description -> Nullable<Text>,
        budget_cents -> Nullable<Int4>,
        is_active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    leader_terms (lock_id) {
        lock_id -> Int8,
        term -> Int8,
        holder -> Text,
        acquired_at -> Timestamptz,
    }
}

diesel::table! {
    pattern_feedback (tenant_id, id) {
        id -> Uuid,
        #[max_length = 255]
        tenant_id -> Varchar,
        #[max_length = 50]
        pattern_type -> Varchar,
        #[max_length = 20]
        severity -> Varchar,
        description -> Text,
        #[max_length = 255]
        signature -> Nullable<Varchar>,
        provenance -> Jsonb,
        occurrence_count -> Int4,
        time_window_minutes -> Nullable<Int4>,
        #[max_length = 100]
        threshold_used -> Nullable<Varchar>,
        metadata -> Nullable<Jsonb>,
        detected_at -> Timestamptz,
        created_at -> Timestamptz,
        acknowledged -> Bool,
        acknowledged_at -> Nullable<Timestamptz>,
        #[max_length = 255]
        acknowledged_by -> Nullable<Varchar>,
    }
}

diesel::table! {
    prediction_events (tenant_id, id) {
        id -> Uuid,
        #[max_length = 255]
        tenant_id -> Varchar,
        #[max_length = 50]
        prediction_type -> Varchar,
        #[max_length = 50]
        subject_type -> Varchar,
        #[max_length = 255]
        subject_id -> Varchar,
        confidence_score -> Float8,
        prediction_value -> Jsonb,
        contributing_factors -> Jsonb,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
        is_advisory -> Bool,
        notes -> Nullable<Text>,
    }
}

diesel::table! {
    runs (id) {
        id -> Varchar,
        tenant_id -> Nullable<Text>,
        created_at -> Timestamptz,
        input_tokens -> Nullable<Int4>,
        output_tokens -> Nullable<Int4>,
    }
}

diesel::table! {
    worker_runs (tenant_id, id) {
        #[max_length = 36]
        id -> Varchar,
        #[max_length = 36]
        tenant_id -> Varchar,
        #[max_length = 100]
        worker_id -> Varchar,
        #[max_length = 36]
        api_key_id -> Nullable<Varchar>,
        #[max_length = 36]
        user_id -> Nullable<Varchar>,
        task -> Text,
        input_json -> Nullable<Text>,
        #[max_length = 50]
        status -> Varchar,
        success -> Nullable<Bool>,
        error -> Nullable<Text>,
        output_json -> Nullable<Text>,
        replay_token_json -> Nullable<Text>,
        total_tokens -> Nullable<Int4>,
        total_latency_ms -> Nullable<Int4>,
        stages_completed -> Nullable<Int4>,
        recoveries -> Int4,
        policy_violations -> Int4,
        cost_cents -> Nullable<Int4>,
        created_at -> Nullable<Timestamptz>,
        started_at -> Nullable<Timestamptz>,
        completed_at -> Nullable<Timestamptz>,
        #[max_length = 36]
        parent_run_id -> Nullable<Varchar>,
        attempt -> Int4,
        is_retry -> Bool,
        is_synthetic -> Bool,
        synthetic_scenario_id -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    aos_traces,
    budget_counters,
    budget_reservations,
    coordination_audit_records,
    cost_anomalies,
    cost_breach_history,
    cost_budgets,
    cost_drift_tracking,
    cost_record_retention,
    cost_records,
    cost_request_keys,
    cost_rollup_daily,
    cost_rollup_hourly,
    costsim_alert_queue,
    costsim_cb_incidents,
    costsim_provenance,
    feature_tags,
    leader_terms,
    pattern_feedback,
    prediction_events,
    runs,
    worker_runs,
);
