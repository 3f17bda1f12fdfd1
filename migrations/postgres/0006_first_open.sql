-- Whether a person's open of the personal broadcast was recorded ([engagement] opens = "first").
ALTER TABLE personal_broadcasts ADD COLUMN human_opened BOOLEAN NOT NULL DEFAULT FALSE;
