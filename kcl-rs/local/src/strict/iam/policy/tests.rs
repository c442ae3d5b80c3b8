use super::*;

#[test]
fn wildcards_match_like_iam() {
    let table = [
        ("*", "anything:at/all", true),
        ("dynamodb:*", "dynamodb:GetItem", true),
        ("dynamodb:*", "kinesis:GetRecords", false),
        ("dynamodb:Get*", "dynamodb:GetItem", true),
        ("dynamodb:Get*", "dynamodb:BatchGetItem", false),
        ("dynamodb:?etItem", "dynamodb:GetItem", true),
        ("dynamodb:?etItem", "dynamodb:etItem", false),
        (
            "arn:aws:dynamodb:*:*:table/APP",
            "arn:aws:dynamodb:r:1:table/APP",
            true,
        ),
        (
            "arn:aws:dynamodb:*:*:table/APP",
            "arn:aws:dynamodb:r:1:table/APP-Workers",
            false,
        ),
        (
            "arn:aws:dynamodb:*:*:table/APP*",
            "arn:aws:dynamodb:r:1:table/APP/index/x",
            true,
        ),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYY", false),
        ("", "", true),
        ("", "x", false),
    ];
    for (pattern, text, expected) in table {
        assert_eq!(
            wildcard_match(pattern, text),
            expected,
            "{pattern} vs {text}"
        );
    }
}

#[test]
fn statement_forms_and_evaluation_order() {
    let policy = Policy::parse(
        r#"{
          "Version": "2012-10-17",
          "Statement": [
            {"Effect": "Allow", "Action": "DynamoDB:*Item", "Resource": "arn:aws:dynamodb:r:1:table/T"},
            {"Effect": "Deny", "Action": ["dynamodb:DeleteItem"], "Resource": ["*"]},
            {"Effect": "Allow", "NotAction": "kinesis:*", "Resource": "arn:aws:dynamodb:r:1:table/Open"}
          ]
        }"#,
    )
    .unwrap();
    let t = "arn:aws:dynamodb:r:1:table/T";
    let open = "arn:aws:dynamodb:r:1:table/Open";
    let table = [
        ("dynamodb:GetItem", t, Decision::Allowed),
        ("dynamodb:getitem", t, Decision::Allowed),
        ("dynamodb:DeleteItem", t, Decision::ExplicitlyDenied),
        ("dynamodb:Scan", t, Decision::ImplicitlyDenied),
        ("dynamodb:Scan", open, Decision::Allowed),
        ("kinesis:ListShards", open, Decision::ImplicitlyDenied),
        (
            "dynamodb:GetItem",
            "arn:aws:dynamodb:r:1:table/Other",
            Decision::ImplicitlyDenied,
        ),
    ];
    for (action, resource, expected) in table {
        assert_eq!(
            policy.decide(action, resource),
            expected,
            "{action} on {resource}"
        );
    }
    let single = Policy::parse(
        r#"{"Statement": {"Effect": "Allow", "Action": "kinesis:ListStreams", "Resource": "*"}}"#,
    )
    .unwrap();
    assert_eq!(single.decide("kinesis:ListStreams", "*"), Decision::Allowed);
}

#[test]
fn unsupported_and_invalid_policies_are_refused() {
    let table = [
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {}}]}"#,
            PolicyError::Unsupported("Condition".into()),
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "*", "NotResource": "*"}]}"#,
            PolicyError::Unsupported("NotResource".into()),
        ),
        (
            r#"{"Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}"#,
            PolicyError::Invalid("Effect must be Allow or Deny, not Some(\"Maybe\")".into()),
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": "*", "NotAction": "x", "Resource": "*"}]}"#,
            PolicyError::Invalid("a statement needs exactly one of Action and NotAction".into()),
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Action": 3, "Resource": "*"}]}"#,
            PolicyError::Invalid("Action must be a string or strings".into()),
        ),
        (
            r#"{"Version": "2012-10-17"}"#,
            PolicyError::Invalid("Statement must be an object or an array".into()),
        ),
    ];
    for (json, expected) in table {
        assert_eq!(Policy::parse(json), Err(expected), "{json}");
    }
    assert!(matches!(
        Policy::parse("not json"),
        Err(PolicyError::Invalid(_))
    ));
}

fn placeholders() -> Placeholders {
    Placeholders {
        region: "us-east-1".into(),
        account: "000000000000".into(),
        stream: "orders".into(),
        app: "billing".into(),
        key_id: "k1".into(),
    }
}

#[test]
fn placeholders_are_substituted_as_whole_words() {
    let p = placeholders();
    let table = [
        (
            "arn:aws:dynamodb:REGION:ACCOUNT:table/APP",
            "arn:aws:dynamodb:us-east-1:000000000000:table/billing",
        ),
        (
            "arn:aws:dynamodb:REGION:ACCOUNT:table/APP-Workers",
            "arn:aws:dynamodb:us-east-1:000000000000:table/billing-Workers",
        ),
        (
            "arn:aws:kinesis:REGION:ACCOUNT:stream/STREAM",
            "arn:aws:kinesis:us-east-1:000000000000:stream/orders",
        ),
        (
            "arn:aws:kms:REGION:ACCOUNT:key/KEY_ID",
            "arn:aws:kms:us-east-1:000000000000:key/k1",
        ),
        ("table/APPLE", "table/APPLE"),
        ("*", "*"),
    ];
    for (text, expected) in table {
        assert_eq!(p.substitute(text), expected);
    }
}

#[test]
fn the_documented_worker_policy_is_found_by_heading() {
    let markdown = include_str!("../../../../../../docs/iam-policy.md");
    let policy = Policy::from_markdown(markdown, "kcl-rs worker", &placeholders()).unwrap();
    let table = "arn:aws:dynamodb:us-east-1:000000000000:table/billing";
    let stream = "arn:aws:kinesis:us-east-1:000000000000:stream/orders";
    assert_eq!(
        policy.decide("dynamodb:UpdateItem", table),
        Decision::Allowed
    );
    assert_eq!(
        policy.decide("kinesis:GetRecords", stream),
        Decision::Allowed
    );
    assert_eq!(
        policy.decide("kinesis:DescribeStream", stream),
        Decision::ImplicitlyDenied
    );
    assert_eq!(
        policy.decide("dynamodb:Query", table),
        Decision::ImplicitlyDenied
    );
    let without = policy.without_action("dynamodb:GetItem");
    assert_eq!(
        without.decide("dynamodb:GetItem", table),
        Decision::ImplicitlyDenied
    );
    assert_eq!(without.decide("dynamodb:PutItem", table), Decision::Allowed);

    let producer = Policy::from_markdown(markdown, "producer", &placeholders()).unwrap();
    assert_eq!(
        producer.decide("kinesis:PutRecords", stream),
        Decision::Allowed
    );
    assert_eq!(
        producer.decide("kinesis:GetRecords", stream),
        Decision::ImplicitlyDenied
    );
    assert_eq!(
        Policy::from_markdown(markdown, "no such section", &placeholders()),
        Err(PolicyError::NoSection("no such section".into()))
    );
}

#[test]
fn a_section_without_its_own_json_block_has_no_policy() {
    let markdown = "# Top\n## A\ntext\n## B\n```json\n{\"Statement\": []}\n```\n";
    assert!(json_block_under(markdown, "A").is_none());
    assert_eq!(
        json_block_under(markdown, "B").unwrap(),
        "{\"Statement\": []}"
    );
}
